"""One run's lifecycle: submit to the backend, follow it, store its outputs, publish its events.

A run lives in a background task that owns it; callers watch it through its RunHandle, so a run is
not tied to the connection that started it (a cancelled Generate call cancels the run explicitly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from generation_service import events as ev
from generation_service import outputs, workflow
from generation_service.comfy import SOCKET_LOST, ComfyBackend, Subscription
from generation_service.comfy_replies import HistoryEntry, node_problems
from generation_service.errors import BackendUnavailable, GenerationError, WorkflowRejected
from generation_service.run_record import RunRecord
from runstore import RunStatus, RunStore, media_url, new_run_id, utc_now

logger = logging.getLogger(__name__)

SOCKET_WAIT_S = 5.0  # how long a submission waits for the backend websocket before relying on /history
HISTORY_ATTEMPTS = 5  # /history reads after completion before the prompt counts as lost
POLL_FAILURES_TOLERATED = 30  # consecutive failed /history polls (socket down) before the run fails
_SERVER_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s'\"/\\:]+)+[/\\]([^\s'\"/\\]+)")


@dataclass(frozen=True)
class RunSpec:
    """What a caller asked for, free of protobuf."""

    workflow_json: str
    workflow_name: str = ""
    include_previews: bool = False


@dataclass(frozen=True)
class CancelRequest:
    reason: str


class RunHandle:
    """The live event log of one run. Any number of readers; events are never dropped."""

    def __init__(self, run_id: str, inbox: asyncio.Queue[Any]) -> None:
        self.run_id = run_id
        self._events: list[ev.RunEvent] = []
        self._wakeup = asyncio.Event()
        self._inbox = inbox
        self.task: asyncio.Task[None] | None = None

    @property
    def finished(self) -> bool:
        return bool(self._events) and self._events[-1].is_terminal

    def publish(self, body: ev.EventBody) -> ev.RunEvent:
        event = ev.RunEvent(self.run_id, len(self._events) + 1, datetime.now(UTC), body)
        self._events.append(event)
        wakeup, self._wakeup = self._wakeup, asyncio.Event()
        wakeup.set()
        return event

    async def events(self, after_seq: int = 0) -> AsyncIterator[ev.RunEvent]:
        """Every event after ``after_seq``, then live ones, until the terminal event."""
        index = after_seq
        while True:
            while index < len(self._events):
                event = self._events[index]
                index += 1
                yield event
                if event.is_terminal:
                    return
            await self._wakeup.wait()

    def cancel(self, reason: str) -> None:
        """Ask the run to stop; it ends with a ``cancelled`` event unless it finished first."""
        if not self.finished:
            self._inbox.put_nowait(CancelRequest(reason))


class Runner:
    """Starts runs and keeps them going; shared by every RPC of the process."""

    def __init__(
        self, store: RunStore, backend: ComfyBackend, *, media_base_url: str, history_poll_s: float = 1.0
    ) -> None:
        self.store = store
        self.backend = backend
        self.media_base_url = media_base_url.rstrip("/")
        self.history_poll_s = history_poll_s
        self.runs: dict[str, RunHandle] = {}
        self.poll_failures_tolerated = POLL_FAILURES_TOLERATED

    async def start(self, spec: RunSpec) -> RunHandle:
        """Validate, record and submit a run. Raises GenerationError before anything ran."""
        graph = workflow.parse(spec.workflow_json)
        run_id, prompt_id = new_run_id(), str(uuid.uuid4())
        submitted = workflow.with_run_prefixes(graph, run_id)
        record = await asyncio.to_thread(
            RunRecord.create,
            self.store,
            run_id,
            prompt_id=prompt_id,
            backend=self.backend.public_url,
            workflow_name=spec.workflow_name,
            workflow=submitted,
        )
        submission = asyncio.create_task(self._submit(record, submitted, graph, spec))
        try:
            # Shielded: a caller that goes away mid-POST must not leave a prompt nobody follows.
            return await asyncio.shield(submission)
        except asyncio.CancelledError:
            submission.add_done_callback(_cancel_if_accepted)
            raise

    async def _submit(
        self, record: RunRecord, submitted: dict[str, Any], graph: dict[str, Any], spec: RunSpec
    ) -> RunHandle:
        run_id, prompt_id = record.run_id, record.prompt_id
        log = {"run_id": run_id, "prompt_id": prompt_id}
        sub = self.backend.subscribe(prompt_id)
        try:
            await self.backend.wait_connected(SOCKET_WAIT_S)
            dropped = node_problems(await self.backend.submit(sub, submitted))
            if dropped:
                # ComfyUI queued only the valid outputs; a partial run is not what was asked for.
                await self.backend.cancel(prompt_id)
                raise WorkflowRejected("some output nodes failed validation", tuple(dropped))
        except GenerationError as exc:
            self.backend.unsubscribe(sub)
            await record.update(
                status=RunStatus.FAILED,
                current_state={"step": "rejected"},
                error={"code": "rejected", "message": str(exc)},
                finished_at=utc_now(),
            )
            logger.info("run %s rejected: %s", run_id, exc, extra=log)
            raise
        handle = RunHandle(run_id, sub.frames)
        handle.publish(ev.Accepted(prompt_id, self.backend.public_url, spec.workflow_name))
        logger.info("run %s accepted as prompt %s", run_id, prompt_id, extra=log)
        follower = _Follower(self, handle, record, sub, workflow.node_infos(graph), spec)
        handle.task = asyncio.create_task(follower.run(), name=f"run-{run_id}")
        self.runs[run_id] = handle
        handle.task.add_done_callback(lambda _: self.runs.pop(run_id, None))
        return handle

    async def close(self) -> None:
        tasks = [h.task for h in self.runs.values() if h.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Follower:
    """Follows one submitted prompt to its end. Owns the run's record and event log."""

    def __init__(
        self,
        runner: Runner,
        handle: RunHandle,
        record: RunRecord,
        sub: Subscription,
        nodes: dict[str, workflow.NodeInfo],
        spec: RunSpec,
    ) -> None:
        self.runner = runner
        self.backend = runner.backend
        self.handle = handle
        self.record = record
        self.sub = sub
        self.nodes = nodes
        self.spec = spec
        self.accepted_at = time.monotonic()
        self.started_at: float | None = None
        self.error: dict[str, Any] | None = None
        self.interrupted: dict[str, Any] | None = None
        self.poll_failures = 0
        self.log = {"run_id": handle.run_id, "prompt_id": sub.prompt_id}

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

    async def _follow(self) -> ev.Completed | ev.Failed | ev.Cancelled:
        with contextlib.suppress(GenerationError):  # the position is informative; the run goes on without it
            position = await self.backend.queue_position(self.sub.prompt_id)
            if position is not None and self.started_at is None and self.sub.frames.empty():
                self.handle.publish(ev.Queued(position))
                await self.record.update(
                    status=RunStatus.QUEUED, current_state={"step": "queued", "position": position}
                )
        while True:
            timeout = self.runner.history_poll_s if self.sub.blind else None
            try:
                async with asyncio.timeout(timeout):
                    item = await self.sub.frames.get()
            except TimeoutError:
                if (entry := await self._poll_history()) is not None:
                    return await self._conclude(entry)
                continue
            if isinstance(item, CancelRequest):
                return await self._cancel(item.reason)
            if item is SOCKET_LOST:
                logger.warning("run %s: backend socket lost; polling /history", self.handle.run_id, extra=self.log)
                continue
            if await self._on_frame(item):
                return await self._conclude(await self._final_history())

    async def _poll_history(self) -> HistoryEntry | None:
        """One poll while the socket is down; a backend that keeps failing ends the run."""
        try:
            entry = await self.backend.history(self.sub.prompt_id)
        except GenerationError:
            self.poll_failures += 1
            if self.poll_failures >= self.runner.poll_failures_tolerated:
                raise
            return None
        self.poll_failures = 0
        return entry

    async def _on_frame(self, frame: dict[str, Any]) -> bool:
        """Translate one websocket frame; True when the prompt is done (``executing`` with node null)."""
        kind, data = frame.get("type"), frame.get("data") or {}
        if kind == "execution_start":
            self.started_at = time.monotonic()
            self.handle.publish(ev.Started(self.started_at - self.accepted_at))
            await self.record.update(status=RunStatus.RUNNING, current_state={"step": "running"})
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

    async def _final_history(self) -> HistoryEntry | None:
        # ComfyUI writes history before it sends the final ``executing``; the retries cover proxies
        # and backends that answer a moment late.
        for attempt in range(HISTORY_ATTEMPTS):
            if (entry := await self.backend.history(self.sub.prompt_id)) is not None:
                return entry
            await asyncio.sleep(0.05 * 2**attempt)
        return None

    async def _conclude(self, entry: HistoryEntry | None) -> ev.Completed | ev.Failed | ev.Cancelled:
        if entry is None:
            return ev.Failed(ev.FailureCode.PROMPT_LOST, "the backend finished the prompt but has no history for it")
        error = self.error or entry.message("execution_error")
        interrupted = self.interrupted or entry.message("execution_interrupted")
        if not entry.succeeded:
            if error:
                return ev.Failed(
                    ev.FailureCode.EXECUTION_ERROR,
                    _scrub(str(error.get("exception_message", "the node raised an error")).strip()),
                    node_id=str(error.get("node_id", "")),
                    node_type=str(error.get("node_type", "")),
                    exception_type=str(error.get("exception_type", "")),
                )
            if interrupted:
                return ev.Cancelled("interrupted on the backend")
            return ev.Failed(ev.FailureCode.EXECUTION_ERROR, f"the backend reported status {entry.status_str!r}")
        return await self._store_outputs(entry)

    async def _store_outputs(self, entry: HistoryEntry) -> ev.Completed | ev.Failed:
        execution_s = _server_duration(entry) or (time.monotonic() - (self.started_at or self.accepted_at))
        await self.record.update(current_state={"step": "downloading"})
        stored: list[ev.StoredOutput] = []
        for download in outputs.select_downloads(entry.outputs, self.spec.include_previews):
            sequence = self.record.next_sequence
            try:
                file = await outputs.store(
                    self.backend.download(download.ref), self.record.run_dir, sequence, download.ref.filename
                )
            except GenerationError as exc:
                return ev.Failed(
                    ev.FailureCode.OUTPUT_FAILED, f"output {download.ref.filename!r}: {exc}", node_id=download.node_id
                )
            kind = file.format.kind
            index = sum(1 for s in stored if s.kind == kind)
            output = ev.StoredOutput(
                kind=kind,
                index=index,
                url=media_url(self.runner.media_base_url, kind, self.handle.run_id, index),
                mime=file.format.mime,
                size_bytes=file.size_bytes,
                sha256=file.sha256,
                node_id=download.node_id,
                filename=file.filename,
            )
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
                        "filename": download.ref.filename,
                        "subfolder": download.ref.subfolder,
                        "type": download.ref.type,
                    },
                }
            )
            stored.append(output)
            self.handle.publish(ev.OutputReady(output))
            logger.info(
                "run %s stored %s (%d bytes)", self.handle.run_id, file.filename, file.size_bytes, extra=self.log
            )
        queue_wait_s = (self.started_at or self.accepted_at) - self.accepted_at
        return ev.Completed(tuple(stored), queue_wait_s, execution_s)

    async def _cancel(self, reason: str) -> ev.Cancelled:
        with contextlib.suppress(GenerationError):
            await self.backend.cancel(self.sub.prompt_id)
        return ev.Cancelled(reason)

    async def _finish(self, outcome: ev.Completed | ev.Failed | ev.Cancelled) -> None:
        fields: dict[str, Any] = {"finished_at": utc_now()}
        if isinstance(outcome, ev.Completed):
            status = RunStatus.COMPLETED
            fields["timings"] = {
                "queue_wait_s": round(outcome.queue_wait_s, 3),
                "execution_s": round(outcome.execution_s, 3),
            }
        elif isinstance(outcome, ev.Failed):
            status = RunStatus.FAILED
            fields["error"] = {
                "code": outcome.code.value,
                "message": outcome.message,
                "node_id": outcome.node_id,
                "node_type": outcome.node_type,
                "exception_type": outcome.exception_type,
            }
        else:
            status = RunStatus.CANCELLED
            fields["cancel_reason"] = outcome.reason
        await self.record.update(status=status, current_state={"step": status.value}, **fields)
        self.handle.publish(outcome)
        logger.info("run %s %s", self.handle.run_id, status.value, extra=self.log)


def _cancel_if_accepted(submission: asyncio.Task[RunHandle]) -> None:
    if not submission.cancelled() and submission.exception() is None:
        submission.result().cancel("the client went away before the run was accepted")


def _server_duration(entry: HistoryEntry) -> float | None:
    start, end = entry.message("execution_start"), entry.message("execution_success")
    if start and end and isinstance(start.get("timestamp"), int) and isinstance(end.get("timestamp"), int):
        return max(0.0, (int(end["timestamp"]) - int(start["timestamp"])) / 1000)
    return None


def _scrub(message: str) -> str:
    """Remove the backend host's directories from an error message (ComfyUI includes absolute paths)."""
    return _SERVER_PATH.sub(r"\1", message)
