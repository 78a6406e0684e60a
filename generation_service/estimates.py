"""Overall progress and an honest ETA for a run.

The basis is what the service measured: the step rate of the node executing (from its ``progress``
frames), and the durations of earlier runs of the same template (or workflow fingerprint) on the same
backend, node by node, kept in run storage (``estimates.json`` at its root) so they survive restarts and
are shared by replicas on the same storage. Where neither says anything, there is no estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from comfy_generation.runstore import events as ev
from comfy_generation.runstore.files import write_text_atomic

logger = logging.getLogger(__name__)

ESTIMATES_FILE = "estimates.json"
MAX_PROFILES = 2000  # (backend, workflow) pairs kept; the oldest go first
MAX_FILE_BYTES = 8 * 1024 * 1024
WRITE_INTERVAL_S = 1.0  # the book's file is rewritten at most this often
WEIGHT_OF_NEWEST = 0.5  # how much a new measurement moves a profile (an exponential average)
# Inputs that change every run without changing its duration: left out of a workflow's fingerprint.
_VOLATILE_INPUTS = frozenset({"seed", "noise_seed", "filename_prefix"})


def profile_key(template: str, graph: dict[str, Any]) -> str:
    """The template's name, or a fingerprint of the workflow (its nodes and inputs, seeds left out)."""
    if template:
        return f"template:{template}"
    shape = {
        node_id: [
            node.get("class_type"),
            {k: v for k, v in (node.get("inputs") or {}).items() if k not in _VOLATILE_INPUTS},
        ]
        for node_id, node in graph.items()
        if isinstance(node, dict)
    }
    return "workflow:" + hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class Profile:
    """Measured durations of one workflow on one backend."""

    execution_s: float
    nodes: dict[str, float]  # node id -> seconds from its start to the next node's
    runs: int = 1

    @classmethod
    def from_json(cls, data: Any) -> Profile:
        """Raises ValueError, TypeError, KeyError or AttributeError for anything but a stored profile."""
        nodes = {str(n): float(s) for n, s in data["nodes"].items()}
        return cls(float(data["execution_s"]), nodes, int(data["runs"]))

    def merged(self, newer: Profile) -> Profile:
        def mix(old: float, new: float) -> float:
            return old + WEIGHT_OF_NEWEST * (new - old)

        nodes = {n: mix(self.nodes[n], s) if n in self.nodes else s for n, s in newer.nodes.items()}
        return Profile(mix(self.execution_s, newer.execution_s), nodes, self.runs + 1)


class DurationBook:
    """The profiles of every (backend, workflow) pair, read once, written atomically after each run."""

    def __init__(self, root: Path | None) -> None:
        self.path = root / ESTIMATES_FILE if root is not None else None
        self._profiles: dict[str, Profile] = self._load()
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None

    def get(self, backend: str, key: str) -> Profile | None:
        return self._profiles.get(f"{backend} {key}")

    def remember(self, name: str, profile: Profile) -> None:
        self._profiles.pop(name, None)
        self._profiles[name] = profile
        while len(self._profiles) > MAX_PROFILES:
            del self._profiles[next(iter(self._profiles))]

    async def measured(self, backend: str, key: str, profile: Profile) -> None:
        name = f"{backend} {key}"
        old = self._profiles.get(name)
        self.remember(name, old.merged(profile) if old is not None else profile)
        if self.path is None:
            return
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_while_dirty(), name="durations")

    async def _write_while_dirty(self) -> None:
        """Write the book now, then at most every WRITE_INTERVAL_S while runs keep ending: a burst of
        runs ending together writes it a few times, not once per run."""
        while self._dirty:
            await self._write()
            await asyncio.sleep(WRITE_INTERVAL_S)

    async def _write(self) -> None:
        assert self.path is not None
        self._dirty = False
        text = json.dumps({k: vars(p) for k, p in self._profiles.items()}, separators=(",", ":"))
        try:
            await asyncio.to_thread(write_text_atomic, self.path, text, False)
        except OSError as exc:  # an estimate is not worth failing a run for
            logger.warning("could not write %s: %s", self.path, exc)

    async def close(self) -> None:
        """Write what the last runs measured (the service is stopping)."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._dirty:
            await self._write()

    def _load(self) -> dict[str, Profile]:
        if self.path is None:
            return {}
        try:
            if self.path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
            data = json.loads(self.path.read_bytes())
            return {str(k): Profile.from_json(v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.warning("ignoring %s (%s): estimates start from scratch", self.path, exc)
            return {}


def estimate(remaining_s: float, basis: ev.EstimateBasis, now: float | None = None) -> ev.Estimate:
    now = time.time() if now is None else now
    remaining_s = max(0.0, remaining_s)
    completion = datetime.fromtimestamp(now + remaining_s, UTC).isoformat()
    return ev.Estimate(completion, round(remaining_s, 3), basis)


@dataclass
class RunClock:
    """One run's progress through its nodes, and what it says about the time left."""

    nodes: tuple[str, ...]  # every node of the workflow
    profile: Profile | None
    cached: set[str] = field(default_factory=set)
    started: dict[str, float] = field(default_factory=dict)  # node -> when it started, in order
    current: str = ""
    first_progress: tuple[float, int] | None = None  # (time, value) of the current node's first progress
    execution_started: float | None = None

    @property
    def to_execute(self) -> int:
        return max(1, len(self.nodes) - len(self.cached))

    def _rest_s(self, after: str) -> float | None:
        """Measured seconds of the nodes not started yet (besides ``after``); None without a profile."""
        if self.profile is None:
            return None
        left = (n for n in self.nodes if n not in self.cached and n not in self.started and n != after)
        return sum(self.profile.nodes.get(n, 0.0) for n in left)

    def on_start(self, now: float) -> ev.Estimate | None:
        self.execution_started = now
        return estimate(self.profile.execution_s, ev.EstimateBasis.HISTORY, now) if self.profile else None

    def total_s(self) -> float | None:
        return self.profile.execution_s if self.profile is not None else None

    def on_cached(self, nodes: tuple[str, ...]) -> None:
        self.cached.update(nodes)

    def on_node(self, node: str, now: float) -> tuple[float, ev.Estimate | None]:
        self.started[node] = now
        self.current, self.first_progress = node, None
        overall = (len(self.started) - 1) / self.to_execute
        rest = self._rest_s(node)
        if rest is None or self.profile is None:
            return min(1.0, overall), None
        return min(1.0, overall), estimate(self.profile.nodes.get(node, 0.0) + rest, ev.EstimateBasis.HISTORY, now)

    def on_progress(self, node: str, value: int, maximum: int, now: float) -> tuple[float, ev.Estimate | None]:
        if node != self.current:  # progress of a node whose start we did not see
            self.current, self.first_progress = node, None
        fraction = min(1.0, value / maximum) if maximum > 0 else 0.0
        done = max(0, len(self.started) - 1) if node in self.started else len(self.started)
        overall = min(1.0, (done + fraction) / self.to_execute)
        rest = self._rest_s(node)
        if self.first_progress is None or value < self.first_progress[1]:
            self.first_progress = (now, value)
        t0, v0 = self.first_progress
        if value > v0 and maximum >= value:
            node_left = (maximum - value) * (now - t0) / (value - v0)
            basis = ev.EstimateBasis.STEP_RATE if rest is None else ev.EstimateBasis.STEP_RATE_AND_HISTORY
            return overall, estimate(node_left + (rest or 0.0), basis, now)
        if rest is not None and self.profile is not None:
            spent = now - self.started.get(node, now)
            node_left = max(0.0, self.profile.nodes.get(node, 0.0) - spent)
            return overall, estimate(node_left + rest, ev.EstimateBasis.HISTORY, now)
        return overall, None

    def measured(self, ended: float) -> Profile | None:
        """What this run measured, once it completed: None when it never saw its nodes start."""
        if self.execution_started is None or not self.started:
            return None
        order = list(self.started.items())
        ends = [t for _, t in order[1:]] + [ended]
        nodes = {n: round(max(0.0, end - t), 3) for (n, t), end in zip(order, ends, strict=True)}
        return Profile(round(max(0.0, ended - self.execution_started), 3), nodes)
