"""Following one submitted prompt to its end: websocket frames while the socket carries them, the
backend's /queue and /history otherwise, deadlines, keep-alives, cancellation and output storage.

The follower owns its run: it alone writes the run's metadata and publishes its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from comfy_generation.runstore import MediaKind, RunStatus, media_url, signed_media_url, utc_now
from generation_service import events as ev
from generation_service import outputs, workflow
from generation_service.comfy import SOCKET_LOST, ComfyBackend, QueueState, Subscription
from generation_service.comfy_replies import HistoryEntry
from generation_service.errors import BackendUnavailable, GenerationError
from generation_service.metrics import Metrics
from generation_service.run_handle import CancelRequest, RunHandle
from generation_service.run_record import RunRecord, failure_to_json

logger = logging.getLogger(__name__)

HISTORY_ATTEMPTS = 5  # /history reads after completion before the prompt counts as lost
ABSENT_CHECKS = 2
DOWNLOADS_AT_ONCE = 8  # consecutive looks that find the prompt neither queued nor in history = lost
_SERVER_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s'\"/\\:]+)+[/\\]([^\s'\"/\\]+)")

Outcome = ev.Completed | ev.Failed | ev.Cancelled


@dataclass(frozen=True)
class FollowPolicy:
    """The knobs shared by every follower of a service (from Settings)."""

    media_base_url: str
    poll_s: float = 1.0
    keepalive_s: float = 10.0
    cancel_confirm_s: float = 30.0
    poll_failures_tolerated: int = 30
    signing_secret: str = ""
    url_ttl_s: float = 86400.0
    # Downloads at once across all runs: when many runs end together, storing their outputs must
    # not crowd out the progress of the runs still going (the event loop serves both).
    downloads: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(DOWNLOADS_AT_ONCE))

    def media_url(self, kind: MediaKind, run_id: str, index: int) -> str:
        """An output's gateway URL; signed, and valid for ``url_ttl_s``, when a secret is set."""
        url = media_url(self.media_base_url, kind, run_id, index)
        if not self.signing_secret:
            return url
        return signed_media_url(url, self.signing_secret, int(time.time() + self.url_ttl_s))


class Follower:
    def __init__(
        self,
        backend: ComfyBackend,
        policy: FollowPolicy,
        handle: RunHandle,
        record: RunRecord,
        sub: Subscription,
        nodes: dict[str, workflow.NodeInfo],
        metrics: Metrics,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.policy = policy
        self.handle = handle
        self.record = record
        self.sub = sub
        self.nodes = nodes
        self.options = record.options
        past = handle.history
        self.accepted_at = past[0].time.timestamp() if past else time.time()
        self.started_at = next((e.time.timestamp() for e in past if isinstance(e.body, ev.Started)), None)
        self.stored = [e.body.output for e in past if isinstance(e.body, ev.OutputReady)]
        self.error: dict[str, Any] | None = None
        self.interrupted: dict[str, Any] | None = None
        self.poll_failures = 0
        self.absent = 0
        self.next_look = time.time() if sub.blind else time.time() + policy.keepalive_s
        self.template = str(record.metadata.get("template") or "")
        self.log = {"run_id": handle.run_id, "prompt_id": sub.prompt_id, "template": self.template}

    async def run(self) -> None:
        try:
            outcome = await self._follow()
        except BackendUnavailable as exc:
            outcome = ev.Failed(ev.FailureCode.BACKEND_UNAVAILABLE, str(exc))
        except Exception as exc:
            logger.exception("run %s failed inside the service", self.handle.run_id, extra=self.log)
            outcome = ev.Failed(ev.FailureCode.INTERNAL, f"internal error: {type(exc).__name__}")
        finally:
            self.backend.unsubscribe(self.sub)
        await self._finish(outcome)

    # -- the main loop ----------------------------------------------------------------------------

    async def _follow(self) -> Outcome:
        if not self.sub.blind and self.started_at is None:
            with contextlib.suppress(GenerationError):  # informative only: the run goes on without it
                await self._report_position(await self.backend.queue_state(self.sub.prompt_id))
        while True:
            expired = self._expired()
            if expired:
                return await self._expire(expired)
            item = await self._next(self._wait_budget())
            if item is None:
                if time.time() >= self.next_look and (outcome := await self._look()) is not None:
                    return outcome
            elif isinstance(item, CancelRequest):
                return await self._stop(ev.Cancelled(item.reason))
            elif item is SOCKET_LOST:
                logger.warning(
                    "run %s: backend socket lost; following /queue and /history", self.handle.run_id, extra=self.log
                )
                self.next_look = time.time()
            elif await self._on_frame(item):
                return await self._conclude(await self._final_history())

    async def _next(self, timeout: float) -> Any:
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                return await self.sub.frames.get()
        except TimeoutError:
            return None

    def _deadline(self) -> tuple[float, str]:
        if self.started_at is None:
            return self.accepted_at + self.options.queue_timeout_s, "queue"
        return self.started_at + self.options.execution_timeout_s, "execution"

    def _expired(self) -> str:
        deadline, phase = self._deadline()
        return phase if time.time() >= deadline else ""

    def _wait_budget(self) -> float:
        now = time.time()
        budget = self._deadline()[0] - now
        if self.sub.blind or self.started_at is None:
            budget = min(budget, self.next_look - now)
        return budget

    async def _look(self) -> Outcome | None:
        """Ask the backend where the prompt is: the socket is down (``blind``), or a queued run's
        keep-alive is due. Ends the run when the prompt finished or the backend forgot it."""
        self.next_look = time.time() + (self.policy.poll_s if self.sub.blind else self.policy.keepalive_s)
        try:
            # A shared snapshot shows a prompt that is queued; only a fresh one may say it is gone.
            state = await self.backend.queue_state(self.sub.prompt_id) or await self.backend.queue_state(
                self.sub.prompt_id, max_age_s=0
            )
            entry = None if state else await self.backend.history(self.sub.prompt_id)
        except GenerationError:
            self.poll_failures += 1
            if self.poll_failures >= self.policy.poll_failures_tolerated:
                raise
            return None
        self.poll_failures = 0
        if entry is not None:
            return await self._conclude(entry)
        if state is None:
            # Between its end and its history entry a prompt is briefly in neither: look twice.
            self.absent += 1
            if self.absent >= ABSENT_CHECKS:
                return ev.Failed(
                    ev.FailureCode.PROMPT_LOST,
                    f"the backend no longer knows prompt "
                    f"{self.sub.prompt_id}: it may have restarted or had its queue cleared",
                )
            self.next_look = time.time() + min(self.policy.poll_s, 0.5)
            return None
        self.absent = 0
        if state.running and self.started_at is None and self.sub.blind:
            await self._mark_started()
        await self._report_position(state)
        return None

    async def _report_position(self, state: QueueState | None) -> None:
        if state is None or state.running or self.started_at is not None:
            return
        self.handle.publish(ev.Queued(state.ahead))
        await self.record.update(status=RunStatus.QUEUED, current_state={"step": "queued", "position": state.ahead})

    async def _mark_started(self) -> None:
        self.started_at = time.time()
        self.metrics.queue_wait.observe(self.started_at - self.accepted_at)
        self.handle.publish(ev.Started(self.started_at - self.accepted_at))
        await self.record.update(status=RunStatus.RUNNING, current_state={"step": "running"})

    async def _on_frame(self, frame: dict[str, Any]) -> bool:
        """Translate one websocket frame; True when the prompt is done (``executing`` with node null)."""
        kind, data = frame.get("type"), frame.get("data") or {}
        if kind == "execution_start" and self.started_at is None:
            await self._mark_started()
        elif kind == "execution_cached" and data.get("nodes"):
            self.handle.publish(ev.NodesCached(tuple(str(n) for n in data["nodes"])))
        elif kind == "executing":
            node = data.get("node")
            if node is None:
                return True
            info = self.nodes.get(str(node), workflow.NodeInfo("", ""))
            self.handle.publish(ev.NodeStarted(str(node), info.class_type, info.title))
            await self.record.update(
                current_state={"step": "running", "node_id": str(node), "class_type": info.class_type}
            )
        elif kind == "progress":
            self.handle.publish(
                ev.NodeProgress(str(data.get("node", "")), int(data.get("value", 0)), int(data.get("max", 0)))
            )
        elif kind == "execution_error":
            self.error = data
        elif kind == "execution_interrupted":
            self.interrupted = data
        return False

    # -- endings ----------------------------------------------------------------------------------

    async def _expire(self, phase: str) -> Outcome:
        limit = self.options.queue_timeout_s if phase == "queue" else self.options.execution_timeout_s
        what = "waited in the backend's queue" if phase == "queue" else "executed"
        return await self._stop(
            ev.Failed(
                ev.FailureCode.DEADLINE_EXCEEDED, f"the run {what} longer than its {phase} timeout of {limit:g} s"
            )
        )

    async def _stop(self, outcome: ev.Failed | ev.Cancelled) -> Outcome:
        """Cancel the backend job, then wait (bounded) until the backend no longer runs or queues it."""
        with contextlib.suppress(GenerationError):
            await self.backend.cancel(self.sub.prompt_id)
        give_up = time.time() + self.policy.cancel_confirm_s
        while time.time() < give_up:
            with contextlib.suppress(GenerationError):
                if await self.backend.queue_state(self.sub.prompt_id, max_age_s=0) is None:
                    return outcome
            # Wait for the prompt's final frame, or poll again; other requests are moot now.
            item = await self._next(min(self.policy.poll_s, give_up - time.time()))
            if (
                isinstance(item, dict)
                and item.get("type") == "executing"
                and (item.get("data") or {}).get("node") is None
            ):
                return outcome
        logger.warning(
            "run %s: the backend did not confirm the cancellation in %.0f s",
            self.handle.run_id,
            self.policy.cancel_confirm_s,
            extra=self.log,
        )
        return outcome

    async def _final_history(self) -> HistoryEntry | None:
        # ComfyUI writes history before it sends the final ``executing``; the retries cover proxies
        # and backends that answer a moment late.
        for attempt in range(HISTORY_ATTEMPTS):
            if (entry := await self.backend.history(self.sub.prompt_id)) is not None:
                return entry
            await asyncio.sleep(0.05 * 2**attempt)
        return None

    async def _conclude(self, entry: HistoryEntry | None) -> Outcome:
        if entry is None:
            return ev.Failed(ev.FailureCode.PROMPT_LOST, "the backend finished the prompt but has no history for it")
        if entry.succeeded:
            return await self._store_outputs(entry)
        error = self.error or entry.message("execution_error")
        if error:
            return ev.Failed(
                ev.FailureCode.EXECUTION_ERROR,
                _scrub(str(error.get("exception_message", "the node raised an error")).strip()),
                node_id=str(error.get("node_id", "")),
                node_type=str(error.get("node_type", "")),
                exception_type=str(error.get("exception_type", "")),
            )
        if self.interrupted or entry.message("execution_interrupted"):
            return ev.Cancelled("interrupted on the backend")
        return ev.Failed(ev.FailureCode.EXECUTION_ERROR, f"the backend reported status {entry.status_str!r}")

    async def _store_outputs(self, entry: HistoryEntry) -> Outcome:
        if self.started_at is None:
            await self._mark_started()
        execution_s = _server_duration(entry) or time.time() - (self.started_at or self.accepted_at)
        await self.record.update(current_state={"step": "downloading"})
        done = self.record.stored_outputs()  # after a restart, some may be stored already
        for download in outputs.select_downloads(entry.outputs, self.options.include_previews):
            ref = download.ref
            if (download.node_id, ref.filename, ref.subfolder, ref.type) in done:
                continue
            try:
                async with self.policy.downloads:
                    output = await self._store(download)
            except GenerationError as exc:
                return ev.Failed(
                    ev.FailureCode.OUTPUT_FAILED, f"output {ref.filename!r}: {exc}", node_id=download.node_id
                )
            self.stored.append(output)
            self.handle.publish(ev.OutputReady(output))
        queue_wait_s = (self.started_at or self.accepted_at) - self.accepted_at
        return ev.Completed(tuple(self.stored), queue_wait_s, execution_s)

    async def _store(self, download: outputs.Download) -> ev.StoredOutput:
        sequence = self.record.next_sequence
        ref = download.ref
        file = await outputs.store(self.backend.download(ref), self.record.run_dir, sequence, ref.filename)
        self.metrics.bytes_downloaded.inc(file.size_bytes)
        kind = file.format.kind
        index = sum(1 for s in self.stored if s.kind == kind)
        await self.record.update(
            entity={
                "sequence": sequence,
                "type": kind.entity_type,
                "filename": file.filename,
                "timestamp": utc_now(),
                "metadata": {
                    "format": file.format.ext,
                    "mime": file.format.mime,
                    "size_bytes": file.size_bytes,
                    "sha256": file.sha256,
                    "node_id": download.node_id,
                    "filename": ref.filename,
                    "subfolder": ref.subfolder,
                    "type": ref.type,
                },
            }
        )
        await self.record.written()  # the gateway finds the output before anyone is told about it
        logger.info("run %s stored %s (%d bytes)", self.handle.run_id, file.filename, file.size_bytes, extra=self.log)
        return ev.StoredOutput(
            kind=kind,
            index=index,
            url=self.policy.media_url(kind, self.handle.run_id, index),
            mime=file.format.mime,
            size_bytes=file.size_bytes,
            sha256=file.sha256,
            node_id=download.node_id,
            filename=file.filename,
        )

    async def _finish(self, outcome: Outcome) -> None:
        """Record the outcome, then publish it: whoever sees the terminal event finds the record final."""
        fields: dict[str, Any] = {"finished_at": utc_now(), "last_seq": self.handle.last_seq + 1}
        if isinstance(outcome, ev.Completed):
            status = RunStatus.COMPLETED
            fields["timings"] = {
                "queue_wait_s": round(outcome.queue_wait_s, 3),
                "execution_s": round(outcome.execution_s, 3),
            }
        elif isinstance(outcome, ev.Failed):
            status = RunStatus.FAILED
            fields["error"] = failure_to_json(outcome)
        else:
            status = RunStatus.CANCELLED
            fields["cancel_reason"] = outcome.reason
        await self.record.update(status=status, current_state={"step": status.value}, durable=True, **fields)
        self.handle.publish(outcome)
        self.metrics.runs.labels(outcome=status.value, template=self.template).inc()
        if isinstance(outcome, ev.Completed):
            self.metrics.execution.observe(outcome.execution_s)
        logger.info("run %s %s", self.handle.run_id, status.value, extra=self.log)


def _is_final_frame(item: object) -> bool:
    """ComfyUI's last frame for a prompt: ``executing`` with node null."""
    return isinstance(item, dict) and item.get("type") == "executing" and (item.get("data") or {}).get("node") is None


def _server_duration(entry: HistoryEntry) -> float | None:
    start, end = entry.message("execution_start"), entry.message("execution_success")
    if start and end and isinstance(start.get("timestamp"), int) and isinstance(end.get("timestamp"), int):
        return max(0.0, (int(end["timestamp"]) - int(start["timestamp"])) / 1000)
    return None


def _scrub(message: str) -> str:
    """Remove the backend host's directories from an error message (ComfyUI includes absolute paths)."""
    return _SERVER_PATH.sub(r"\1", message)
