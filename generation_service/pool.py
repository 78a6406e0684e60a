"""A pool of ComfyUI backends: one client (websocket, probe, queue snapshot, node classes) per backend,
dispatch by capability and load, and notice of a backend that stopped answering.

Dispatch picks, among the backends that are up, not full, offer every node class of the workflow and
carry every label asked for, the least loaded: (its queue length as last seen + the runs dispatched to it
and not yet seen in its queue or started) / its weight; ties go round robin. A backend that answers
neither its probe nor its websocket for ``down_after_s`` is *lost*: the runs on it are told (they move,
fail or retry, see follower.py), and it is used again once it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from generation_service.backend import PoolClient, cancel_prompt
from generation_service.comfy_backend import ComfyBackend, public_url
from generation_service.errors import (
    BackendUnavailable,
    GenerationError,
    NoCapableBackend,
    PoolFull,
)
from generation_service.metrics import Metrics
from generation_service.swarm_discovery import Changes, SwarmDiscovery

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendConfig:
    """One backend as the operator describes it."""

    name: str
    url: str
    swarm_backend_id: str = ""
    weight: float = 1.0
    max_queued: int = 0  # runs queued there at most (0: no limit)
    labels: frozenset[str] = frozenset()


def configs_from_urls(urls: str, swarm_backend_id: str = "") -> list[BackendConfig]:
    """``--backend-url``: one base URL or a comma-separated list; each backend is named by its URL."""
    configs = []
    for url in (u.strip() for u in urls.split(",")):
        if url:
            configs.append(BackendConfig(public_url(url), url, swarm_backend_id))
    if len({c.name for c in configs}) != len(configs):
        raise ValueError("backend_url: the same backend is listed twice")
    return configs


def configs_from_file(path: Path) -> list[BackendConfig]:
    """``--backends-file``: TOML with one ``[[backend]]`` table per backend (name, url, and optionally
    swarm_backend_id, weight, max_queued, labels)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"backends_file: cannot read {path}: {exc}") from exc
    entries = data.get("backend")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"backends_file: {path} has no [[backend]] table")
    configs = []
    for i, entry in enumerate(entries):
        where = f"backends_file: {path} backend {i + 1}"
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("url"), str)
        ):
            raise ValueError(f"{where}: needs a name and a url")
        unknown = set(entry) - {"name", "url", "swarm_backend_id", "weight", "max_queued", "labels"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        weight, max_queued, labels = entry.get("weight", 1.0), entry.get("max_queued", 0), entry.get("labels", [])
        if not isinstance(weight, int | float) or weight <= 0:
            raise ValueError(f"{where}: weight must be a number above 0")
        if not isinstance(max_queued, int) or max_queued < 0:
            raise ValueError(f"{where}: max_queued must be 0 (no limit) or more")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"{where}: labels must be a list of strings")
        swarm_id = entry.get("swarm_backend_id", "")
        configs.append(
            BackendConfig(entry["name"], entry["url"], str(swarm_id), float(weight), max_queued, frozenset(labels))
        )
    if len({c.name for c in configs}) != len(configs):
        raise ValueError(f"backends_file: {path}: two backends have the same name")
    return configs


def swarm_name(backend_id: int) -> str:
    """The pool's name of a discovered SwarmUI backend (recorded as its runs' backend)."""
    return f"swarm-{backend_id}"


LostCallback = Callable[["Member"], None]


class LoadShare(Protocol):
    """Where replicas share the runs they dispatched (replica mode): told of each dispatch and of each
    prompt that started or ended; ``Member.elsewhere`` holds what the other replicas dispatched."""

    def dispatched(self, backend: str, prompt_id: str) -> None: ...

    def gone(self, backend: str, prompt_id: str) -> None: ...


@dataclass(eq=False)
class Member:
    """One backend of the pool and what the pool knows of it."""

    config: BackendConfig
    client: PoolClient
    up: bool | None = None  # None until the first probe
    last_error: str = ""
    seen: set[str] = field(default_factory=set)  # prompts running or pending there, as last seen
    node_classes: frozenset[str] | None = None  # None: not known (yet)
    unseen: dict[str, float] = field(default_factory=dict)  # prompt id -> dispatch time, not yet in a snapshot
    elsewhere: set[str] = field(default_factory=set)  # dispatched by other replicas, not yet in a snapshot
    share: LoadShare | None = None
    runs: dict[str, LostCallback] = field(default_factory=dict)  # prompt id -> how to tell its run
    deletes: set[str] = field(default_factory=set)  # prompts taken off it: cancelled there once it answers
    # Our runs' prompts there, in dispatch order -> the seconds each still executes (None: no basis).
    remaining: dict[str, float | None] = field(default_factory=dict)
    down_since: float | None = None
    lost: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def queue_length(self) -> int:
        """Prompts running or pending there: as last seen, plus those sent since (by any replica), less ours
        ended since."""
        return len(self.seen) + len(self.unseen) + len(self.elsewhere)

    @property
    def load(self) -> float:
        return self.queue_length / self.config.weight

    @property
    def full(self) -> bool:
        return bool(self.config.max_queued) and self.queue_length >= self.config.max_queued

    def offers(self, classes: Iterable[str]) -> bool:
        return self.node_classes is None or all(c in self.node_classes for c in classes)

    def started(self, prompt_id: str) -> None:
        """The run began executing (or ended): it no longer waits in this backend's queue."""
        self.unseen.pop(prompt_id, None)
        if self.share is not None:
            self.share.gone(self.name, prompt_id)

    def release(self, prompt_id: str) -> None:
        """The run no longer follows a prompt here (it ended, or moved)."""
        self.started(prompt_id)
        self.seen.discard(prompt_id)
        self.runs.pop(prompt_id, None)
        self.remaining.pop(prompt_id, None)


class BackendPool:
    """Every backend of the service; safe to share between all runs of the process."""

    def __init__(
        self,
        configs: list[BackendConfig],
        metrics: Metrics,
        *,
        request_timeout_s: float = 30.0,
        retries: int = 3,
        probe_s: float = 5.0,
        down_after_s: float = 30.0,
        clients: Mapping[str, PoolClient] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """``clients``: ready-made clients by backend name (tests); the others are ComfyBackends, sending
        ``headers`` on every request."""
        self.headers = headers or {}
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.retries = retries
        self.probe_s = probe_s
        self.down_after_s = down_after_s
        self.members: dict[str, Member] = {}
        self._round_robin = itertools.count()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._looks: set[asyncio.Task[None]] = set()
        self.on_health: Callable[[], None] = lambda: None
        self.share: LoadShare | None = None
        for config in configs:
            self._add(config, clients.get(config.name) if clients else None)

    def _add(self, config: BackendConfig, client: PoolClient | None = None) -> Member:
        if client is None:
            client = ComfyBackend(
                config.url,
                backend_id=config.swarm_backend_id,
                request_timeout_s=self.request_timeout_s,
                retries=self.retries,
                headers=self.headers,
            )
        member = Member(config, client, share=self.share)
        client.on_reconnect = lambda: self._reconnected(member)
        client.on_connect = lambda: self._answering(member)
        self.members[config.name] = member
        return member

    def share_load(self, share: LoadShare) -> None:
        """Count the runs other replicas dispatch (replica mode)."""
        self.share = share
        for member in self.members.values():
            member.share = share

    @property
    def any_up(self) -> bool:
        return any(m.up for m in self.members.values())

    def get(self, name: str) -> Member | None:
        return self.members.get(name)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every client and look at every backend once (so health is known before serving)."""
        await asyncio.gather(*(self._start(m) for m in self.members.values()))

    async def _start(self, member: Member) -> None:
        await member.client.start()
        await self._look(member)
        self._tasks[member.name] = asyncio.create_task(self._watch(member), name=f"backend-{member.name}")

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._looks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for member in self.members.values():
            await member.client.close()

    async def add(self, config: BackendConfig) -> None:
        """A backend that appeared (SwarmUI discovery)."""
        if config.name not in self.members:
            logger.info("backend %s added (%s)", config.name, config.url)
            await self._start(self._add(config))

    async def remove(self, name: str) -> None:
        """A backend that disappeared: its runs are told at once, as for a lost backend."""
        member = self.members.pop(name, None)
        if member is None:
            return
        logger.warning("backend %s removed", name)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        member.up = False
        self._tell_lost(member)
        await member.client.close()
        self.on_health()

    async def follow_swarm(self, discovery: SwarmDiscovery) -> None:
        """Keep one backend per usable SwarmUI ComfyUI backend, as SwarmUI lists them (see apply_swarm)."""
        async for changes in discovery.follow():
            await self.apply_swarm(changes, discovery.proxy_url)

    async def apply_swarm(self, changes: Changes, proxy_url: str) -> None:
        """Backends SwarmUI added, removed, disabled, restarting or back: each usable one is a backend of
        the pool (``swarm-<id>``, pinned by its id); one that stops being usable leaves the pool, so its
        runs are moved or failed at once."""
        removed = {b.id for b in changes.removed}
        for backend in (*changes.removed, *changes.changed):
            if backend.id in removed or not backend.usable:
                await self.remove(swarm_name(backend.id))
        for backend in (*changes.added, *changes.changed):
            if backend.usable and backend.id not in removed:
                await self.add(BackendConfig(swarm_name(backend.id), proxy_url, str(backend.id)))
        self.on_health()

    # -- watching each backend --------------------------------------------------------------------

    async def _watch(self, member: Member) -> None:
        while True:
            await asyncio.sleep(self.probe_s)
            await self._look(member)

    async def _look(self, member: Member) -> None:
        up = await member.client.probe()
        labels = {"backend": member.name}
        self.metrics.backend_up.labels(**labels).set(1 if up else 0)
        if up:
            await self._refresh(member)
        else:
            member.last_error = getattr(member.client, "probe_error", "") or "not answering"
        if up is not member.up:
            logger.log(logging.INFO if up else logging.WARNING, "backend %s is %s", member.name, "up" if up else "down")
            member.up = up
            self.on_health()
        now = time.monotonic()
        if up or member.client.connected:  # lost only when it answers neither its probe nor its socket
            member.down_since, member.lost = None, False
            return
        if member.down_since is None:
            member.down_since = now
        if not member.lost and now - member.down_since >= self.down_after_s:
            member.lost = True
            logger.warning("backend %s has not answered for %.0f s: moving its runs", member.name, self.down_after_s)
            self._tell_lost(member)

    async def _refresh(self, member: Member) -> None:
        """Queue snapshot, node classes when not known, and the cancels owed since it was lost."""
        try:
            taken = time.time()
            snapshot = await member.client.queue_snapshot(max_age_s=0)
            member.seen = set(snapshot)
            member.unseen = {p: t for p, t in member.unseen.items() if p not in snapshot and t > taken}
            member.elsewhere -= member.seen
            if member.node_classes is None:
                member.node_classes = await member.client.node_classes()
            for prompt_id in list(member.deletes):
                await cancel_prompt(member.client, prompt_id)  # out of its queue, or interrupted
                member.deletes.discard(prompt_id)
            member.last_error = ""
        except GenerationError as exc:
            member.last_error = str(exc)[:300]
        self.metrics.backend_queue.labels(backend=member.name).set(member.queue_length)

    def _answering(self, member: Member) -> None:
        """Its websocket connected: look at it now rather than at the next probe, so that a backend that
        came up takes runs at once (a service started before its backend refused them until then)."""
        if member.up is not True and member.name in self._tasks:
            look = asyncio.create_task(self._look(member), name=f"look-{member.name}")
            self._looks.add(look)
            look.add_done_callback(self._looks.discard)

    def _reconnected(self, member: Member) -> None:
        self.metrics.reconnects.inc()
        member.node_classes = None  # a restarted backend may have other custom nodes

    def _tell_lost(self, member: Member) -> None:
        for prompt_id, tell in list(member.runs.items()):
            with contextlib.suppress(Exception):
                tell(member)
            member.runs.pop(prompt_id, None)

    # -- dispatch ---------------------------------------------------------------------------------

    def choose(self, classes: frozenset[str], labels: frozenset[str] = frozenset(), exclude: str = "") -> Member:
        """The backend a new run goes to. Raises NoCapableBackend (no backend has all the node classes
        together, or the labels), BackendUnavailable (the capable ones are down) or PoolFull."""
        if not self.members:
            raise BackendUnavailable("no backend is known yet: SwarmUI has not listed any usable ComfyUI backend")
        members = [m for m in self.members.values() if m.name != exclude]
        labelled = [m for m in members if labels <= m.config.labels]
        if not labelled:
            known = sorted({label for m in self.members.values() for label in m.config.labels})
            raise NoCapableBackend(f"no backend has the labels {sorted(labels)} (labels in use: {known})")
        capable = [m for m in labelled if m.offers(classes)]
        if not capable:
            offered = set().union(*(m.node_classes or set() for m in labelled))
            if classes - offered:
                # No backend knows these classes at all: that is the workflow's fault, and a backend's
                # validation says so precisely (INVALID_ARGUMENT naming the node).
                capable = labelled
            else:
                lacking = "; ".join(f"{m.name} lacks {sorted(classes - (m.node_classes or set()))}" for m in labelled)
                raise NoCapableBackend(f"no backend offers every node class of this workflow together: {lacking}")
        answering = [m for m in capable if m.up is not False]
        if not answering:
            errors = "; ".join(f"{m.name}: {m.last_error or 'not answering'}" for m in capable)
            raise BackendUnavailable(f"no backend that can run this workflow is answering ({errors})")
        room = [m for m in answering if not m.full]
        if not room:
            raise PoolFull(
                f"every backend that can run this workflow holds its most queued runs ({len(answering)} backend(s))",
                retry_after_s=max(1.0, self.probe_s),
            )
        lowest = min(m.load for m in room)
        tied = [m for m in room if m.load == lowest]
        return tied[next(self._round_robin) % len(tied)]

    def dispatched(self, member: Member, prompt_id: str, on_lost: LostCallback, resumed: bool = False) -> None:
        """A prompt was (or is about to be) submitted to ``member``; ``resumed``: followed again after a
        restart (told when the backend is lost, not counted as dispatched)."""
        member.runs[prompt_id] = on_lost
        if not resumed:
            member.unseen[prompt_id] = time.time()
            self.metrics.dispatched.labels(backend=member.name).inc()
            if member.share is not None:
                member.share.dispatched(member.name, prompt_id)
