"""Following one submitted prompt to its end: websocket frames while the socket carries them, the
backend's /queue and /history otherwise, deadlines, keep-alives, cancellation and output storage.

The follower owns its run: everything the run writes goes through the run's writer, and only the
follower publishes the run's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from comfy_generation.runstore import (
    CurrentState,
    Entity,
    MediaKind,
    OutputMeta,
    RunStatus,
    Timings,
    output_url,
    utc_now,
)
from comfy_generation.runstore import events as ev
from generation_service import outputs, workflow
from generation_service.backend import SOCKET_LOST, Backend, DetachedBackend, QueueState, Subscription, cancel_prompt
from generation_service.comfy_replies import FileRef, HistoryEntry
from generation_service.errors import BackendUnavailable, GenerationError
from generation_service.estimates import DurationBook, RunClock, estimate, profile_key
from generation_service.metrics import Metrics
from generation_service.pool import BackendPool, Member
from generation_service.preview_file import LatestPreview
from generation_service.previews import ImageFrame, image_size
from generation_service.run_handle import BackendLost, CancelRequest, Deposed, RunHandle, StorageFailure
from generation_service.run_summary import stored_outputs
from generation_service.run_writer import RunWriter

logger = logging.getLogger(__name__)

# Downloads at once across all runs: when many runs end together, storing their outputs must not crowd
# out the progress of the runs still going (the event loop serves both).
DOWNLOADS_AT_ONCE = 8
_SERVER_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s'\"/\\:]+)+[/\\]([^\s'\"/\\]+)")

Outcome = ev.Completed | ev.Failed | ev.Cancelled
SOCKET_WAIT_S = 5.0  # how long a submission waits for the backend websocket before relying on polling
# A preview travels in one gRPC message, and a default client refuses more than 4 MiB: bigger ones (no
# sampler previews are) are dropped. SaveImageWebsocket images have no such limit: they are stored.
MAX_PREVIEW_BYTES = 2 * 1024 * 1024
WEBSOCKET_IMAGE_NODE = "SaveImageWebsocket"


@dataclass(frozen=True)
class FollowPolicy:
    """The knobs shared by every follower of a service (from Settings)."""

    media_base_url: str
    poll_s: float = 1.0
    keepalive_s: float = 10.0
    cancel_confirm_s: float = 30.0
    poll_failures_tolerated: int = 30
    # How long a prompt may be found neither queued nor in history before it counts as lost. Slow
    # proxies write history seconds after the prompt's last frame; a restarted backend forgets it for good.
    lost_grace_s: float = 60.0
    signing_secret: str = ""
    url_ttl_s: float = 86400.0
    file_urls: bool = False  # with a secret: URLs naming the stored file, served by nginx itself
    downloads: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(DOWNLOADS_AT_ONCE))
    durations: DurationBook = field(default_factory=lambda: DurationBook(None))  # what estimates rest on

    def media_url(self, kind: MediaKind, run_id: str, index: int, filename: str) -> str:
        """An output's URL; signed, and valid for ``url_ttl_s``, when a secret is set (a file URL with
        ``file_urls``)."""
        expires = int(time.time() + self.url_ttl_s)
        name = filename if self.file_urls else ""
        return output_url(
            self.media_base_url, kind, run_id, index, secret=self.signing_secret, expires=expires, filename=name
        )


class _Deposed(Exception):
    """Another replica took the run over: stop without writing, cancelling or moving anything."""


class Follower:
    def __init__(
        self,
        pool: BackendPool,
        member: Member | None,
        policy: FollowPolicy,
        handle: RunHandle,
        writer: RunWriter,
        sub: Subscription,
        graph: dict[str, Any],
        metrics: Metrics,
    ) -> None:
        """``member`` None: the run's backend is no longer part of the pool (it is moved or failed)."""
        self.pool = pool
        self.member = member
        self.backend: Backend = member.client if member is not None else DetachedBackend(writer.record.backend)
        self.graph = graph
        self.metrics = metrics
        self.policy = policy
        self.handle = handle
        self.writer = writer
        self.sub = sub
        self.nodes = workflow.node_infos(graph)
        self.options = writer.record.options
        past = handle.history
        self.accepted_at = past[0].time.timestamp() if past else time.time()
        self.started_at = next((e.time.timestamp() for e in past if isinstance(e.body, ev.Started)), None)
        # Resumed after a restart that came between recording the run and announcing it: the first look
        # at the backend tells whether the POST landed.
        self.unannounced = not past
        self.error: dict[str, Any] | None = None
        self.interrupted: dict[str, Any] | None = None
        self.poll_failures = 0
        self.absent_since: float | None = None
        self.next_look = time.time() if sub.blind else time.time() + policy.keepalive_s
        self.template = writer.record.template
        self.log = {"run_id": handle.run_id, "prompt_id": sub.prompt_id, "template": self.template}
        self.profile_key = profile_key(self.template, graph)
        self.clock = RunClock(tuple(self.nodes), policy.durations.get(writer.record.backend, self.profile_key))
        self.node_values: dict[str, tuple[int, int]] = {}  # node -> its last (value, max)
        self.previews_shown = 0
        self.latest_preview = LatestPreview(writer.store.run_dir(handle.run_id)) if self.options.live_previews else None
        self.websocket_images = 0
        self.held: ImageFrame | None = None  # a type-4 image waiting for its progress frame
        self.output_failure: ev.Failed | None = None  # a SaveImageWebsocket image that could not be stored
        self.ended_at: float | None = None
        self._expect(self.clock.total_s())

    async def run(self) -> None:
        try:
            outcome = await self._follow()
        except _Deposed:
            logger.warning("run %s was taken over by another replica; no longer followed here", self.handle.run_id)
            return
        except BackendUnavailable as exc:
            outcome = ev.Failed(ev.FailureCode.BACKEND_UNAVAILABLE, str(exc))
        except Exception as exc:
            logger.exception("run %s failed inside the service", self.handle.run_id, extra=self.log)
            outcome = ev.Failed(ev.FailureCode.INTERNAL, f"internal error: {type(exc).__name__}")
        finally:
            self.backend.unsubscribe(self.sub)
            if self.member is not None:
                self.member.release(self.sub.prompt_id)
        await self._finish(outcome)
        await self.writer.settle()

    # -- the main loop ----------------------------------------------------------------------------

    async def _follow(self) -> Outcome:
        if self.member is None:
            self.handle.inbox.put_nowait(BackendLost(self.writer.record.backend))
        elif not self.sub.blind and self.started_at is None:
            with contextlib.suppress(GenerationError):  # informative only: the run goes on without it
                await self._report_position(await self.backend.queue_state(self.sub.prompt_id))
        while True:
            self._check_owner()
            expired = self._expired()
            if expired:
                return await self._expire(expired)
            item = await self._next(self._wait_budget())
            if item is None:
                if time.time() >= self.next_look and (outcome := await self._look()) is not None:
                    return outcome
            elif (outcome := await self._on_item(item)) is not None:
                return outcome

    async def _on_item(self, item: object) -> Outcome | None:
        """One item of the run's inbox. A type-4 image comes just before the ``progress`` frame of its
        step: it is held until that frame is handled, so a preview follows the progress it shows."""
        if isinstance(item, ImageFrame):
            await self._show_held()
            if item.node_id:
                self.held = item
            else:
                await self._on_image(item)
            return None
        is_progress = isinstance(item, dict) and item.get("type") == "progress"
        if not is_progress:
            await self._show_held()
        outcome = await self._on_control_or_frame(item)
        await self._show_held()
        return outcome

    async def _show_held(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            await self._on_image(held)

    async def _on_control_or_frame(self, item: object) -> Outcome | None:
        """A control request, a socket loss, or a text websocket frame."""
        if isinstance(item, Deposed):
            raise _Deposed
        if isinstance(item, CancelRequest):
            return await self._stop(ev.Cancelled(item.reason))
        if isinstance(item, StorageFailure):
            return await self._stop(ev.Failed(ev.FailureCode.STORAGE_ERROR, item.message))
        if isinstance(item, BackendLost):
            return await self._backend_lost(item.backend)
        if item is SOCKET_LOST:
            logger.warning(
                "run %s: backend socket lost; following /queue and /history", self.handle.run_id, extra=self.log
            )
            self.next_look = time.time()
            return None
        if isinstance(item, dict) and await self._on_frame(item):
            return await self._after_last_frame()
        return None

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
        if (state or entry) and self.unannounced:
            self._announce()
        if entry is not None:
            return await self._conclude(entry)
        if state is None:
            return self._absent()
        self.absent_since = None
        if state.running and self.started_at is None and self.sub.blind:
            await self._mark_started()
        await self._report_position(state)
        return None

    def _absent(self) -> Outcome | None:
        """The prompt is neither queued nor in history: lost once that lasts ``lost_grace_s``."""
        now = time.time()
        if self.absent_since is None:
            self.absent_since = now
        if now - self.absent_since < self.policy.lost_grace_s:
            self.next_look = now + min(self.policy.poll_s, 0.5)
            return None
        if self.unannounced:
            return ev.Failed(ev.FailureCode.PROMPT_LOST, "the service restarted before the backend took the prompt")
        return ev.Failed(
            ev.FailureCode.PROMPT_LOST,
            f"the backend no longer knows prompt {self.sub.prompt_id}: it may have restarted or had its queue cleared",
        )

    def _announce(self) -> None:
        record = self.writer.record
        self.handle.publish(
            ev.Accepted(record.prompt_id, record.backend, record.workflow, record.template, tuple(record.seeds.items()))
        )
        self.unannounced = False

    async def _report_position(self, state: QueueState | None) -> None:
        if state is None or state.running or self.started_at is not None:
            return
        guess = self._queued_estimate(state.ahead)
        self.handle.publish(ev.Queued(state.ahead, estimate=guess))
        await self.writer.update(
            status=RunStatus.QUEUED, current_state=CurrentState("queued", position=state.ahead, estimate=guess)
        )

    def _expect(self, remaining_s: float | None) -> None:
        """Tell the backend's member how long this run still executes (None: no basis), for the runs
        queued behind it."""
        if self.member is not None:
            self.member.remaining[self.sub.prompt_id] = remaining_s

    def _queued_estimate(self, ahead: int) -> ev.Estimate | None:
        """This run's measured duration plus the time left of the ``ahead`` prompts before it, when they
        are all runs of this process with a basis (the prompts queued on the member before this one)."""
        total = self.clock.total_s()
        if total is None or self.member is None:
            return None
        order = list(self.member.remaining.items())
        mine = next((i for i, (prompt, _) in enumerate(order) if prompt == self.sub.prompt_id), len(order))
        before = [left for _, left in order[:mine]][mine - ahead :] if ahead else []
        if len(before) < ahead or any(left is None for left in before):
            return None
        return estimate(total + sum(left for left in before if left is not None), ev.EstimateBasis.HISTORY)

    async def _mark_started(self) -> None:
        self.started_at = time.time()
        if self.member is not None:
            self.member.started(self.sub.prompt_id)
        self.metrics.queue_wait.observe(self.started_at - self.accepted_at)
        guess = self.clock.on_start(self.started_at)
        self.handle.publish(ev.Started(self.started_at - self.accepted_at, guess))
        await self.writer.update(status=RunStatus.RUNNING, current_state=CurrentState("running", estimate=guess))

    async def _on_frame(self, frame: dict[str, Any]) -> bool:
        """Translate one websocket frame; True when the prompt is done (``executing`` with node null)."""
        kind, data = frame.get("type"), frame.get("data") or {}
        if kind == "execution_start" and self.started_at is None:
            await self._mark_started()
        elif kind == "execution_cached" and data.get("nodes"):
            cached = tuple(str(n) for n in data["nodes"])
            self.clock.on_cached(cached)
            self.handle.publish(ev.NodesCached(cached))
        elif kind == "executing":
            node = data.get("node")
            if node is None:
                self.ended_at = time.time()
                return True
            info = self.nodes.get(str(node), workflow.NodeInfo("", ""))
            overall, guess = self.clock.on_node(str(node), time.time())
            self._expect(guess.remaining_s if guess else None)
            self.handle.publish(ev.NodeStarted(str(node), info.class_type, info.title, overall, guess))
            await self.writer.update(
                current_state=CurrentState(
                    "running", node_id=str(node), class_type=info.class_type, overall=overall, estimate=guess
                )
            )
        elif kind == "progress":
            node, value, maximum = str(data.get("node", "")), int(data.get("value", 0)), int(data.get("max", 0))
            self.node_values[node] = (value, maximum)
            overall, guess = self.clock.on_progress(node, value, maximum, time.time())
            self._expect(guess.remaining_s if guess else None)
            self.handle.publish(ev.NodeProgress(node, value, maximum, overall, guess))
            state = self.writer.record.current_state
            await self.writer.update(current_state=dataclasses.replace(state, overall=overall, estimate=guess))
        elif kind == "execution_error":
            self.error = data
        elif kind == "execution_interrupted":
            self.interrupted = data
        return False

    async def _on_image(self, frame: ImageFrame) -> None:
        """A binary image frame: a SaveImageWebsocket node's image is an output; any other is a preview,
        shown (never journaled) when the run asked for previews."""
        node = frame.node_id or self.clock.current
        if self.nodes.get(node, workflow.NodeInfo("", "")).class_type == WEBSOCKET_IMAGE_NODE:
            await self._store_websocket_image(node, frame)
            return
        if self.latest_preview is None or len(frame.image) > MAX_PREVIEW_BYTES:
            return
        self.previews_shown += 1
        value, maximum = self.node_values.get(node, (0, 0))
        width, height = image_size(frame.image, frame.mime)
        body = ev.Preview(node, value, maximum, frame.mime, width, height, frame.image, self.previews_shown)
        if self.handle.show_preview(body) is not None:
            self.latest_preview.offer(frame.image, frame.mime)

    async def _store_websocket_image(self, node: str, frame: ImageFrame) -> None:
        """Stage the image as an output of ``node``, like a downloaded one (published with the others)."""
        if self.output_failure is not None or not self.writer.may_write():
            return
        self.websocket_images += 1
        ext = ".png" if frame.mime == "image/png" else ".jpg"
        name = f"{WEBSOCKET_IMAGE_NODE}_{node}_{self.websocket_images:05}{ext}"

        async def chunks() -> AsyncIterator[bytes]:
            yield frame.image

        try:
            await self._stage(outputs.Download(node, FileRef(name, "", "websocket")), chunks())
        except OSError as exc:
            message = self.writer.storage.failed(exc, f"storing the websocket image {name!r}")
            self.output_failure = ev.Failed(ev.FailureCode.STORAGE_ERROR, message, node_id=node)

    # -- failover ---------------------------------------------------------------------------------

    async def _backend_lost(self, name: str) -> Outcome | None:
        """The run's backend stopped answering: a queued run moves to another backend; an executing one
        fails, or starts over elsewhere once when the request allowed it. None: the run goes on."""
        self._check_owner()
        record = self.writer.record
        lost = ev.Failed(ev.FailureCode.BACKEND_LOST, f"backend {name} stopped answering while the run executed")
        if self.started_at is not None and (record.retried or not self.options.retry_on_backend_loss):
            return lost
        if record.uploaded_inputs:
            return ev.Failed(
                ev.FailureCode.BACKEND_LOST,
                f"backend {name} stopped answering, and the run's input media were uploaded there: submit it again",
            )
        if self.member is not None:
            self.pool.metrics.failovers.labels(backend=self.member.name).inc()
            self.member.release(self.sub.prompt_id)
            self.member.deletes.add(self.sub.prompt_id)  # taken back: cancelled there once it answers again
        try:
            target = self.pool.choose(frozenset(n.class_type for n in self.nodes.values()), self._labels, name)
        except GenerationError as exc:
            return ev.Failed(ev.FailureCode.BACKEND_LOST, f"backend {name} stopped answering; {exc}")
        return await self._move(target, retry=self.started_at is not None)

    @property
    def _labels(self) -> frozenset[str]:
        return frozenset(self.options.backend_labels)

    async def _move(self, target: Member, retry: bool) -> Outcome | None:
        """Submit the run's workflow to ``target`` under a new prompt id; same run, same seq numbering."""
        self.backend.unsubscribe(self.sub)
        prompt_id = str(uuid.uuid4())
        self.member, self.backend = target, target.client
        self.clock = RunClock(tuple(self.nodes), self.policy.durations.get(target.name, self.profile_key))
        self.sub = target.client.subscribe(prompt_id, frames=self.handle.inbox)
        self.pool.dispatched(target, prompt_id, self._on_lost)
        try:
            await target.client.wait_connected(SOCKET_WAIT_S)
            await target.client.submit(self.sub, self.graph)
            state = await target.client.queue_state(prompt_id)
        except GenerationError as exc:
            return ev.Failed(ev.FailureCode.BACKEND_LOST, f"moving the run to backend {target.name} failed: {exc}")
        logger.warning(
            "run %s moved to backend %s as prompt %s%s",
            self.handle.run_id,
            target.name,
            prompt_id,
            " (starting over)" if retry else "",
            extra=self.log,
        )
        self.started_at, self.error, self.interrupted, self.absent_since = None, None, None, None
        self.next_look = time.time() if self.sub.blind else time.time() + self.policy.keepalive_s
        self.log = {**self.log, "prompt_id": prompt_id}
        position = state.ahead if state is not None else 0
        self.handle.publish(ev.Queued(position, backend=target.name))
        await self.writer.update(
            prompt_id=prompt_id,
            backend=target.name,
            retried=self.writer.record.retried or retry,
            status=RunStatus.QUEUED,
            current_state=CurrentState("queued", position=position),
            durable=True,
        )
        return None

    def _check_owner(self) -> None:
        if not self.writer.may_write():
            raise _Deposed

    def _on_lost(self, member: Member) -> None:
        self.handle.inbox.put_nowait(BackendLost(member.name))

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
        self._check_owner()
        with contextlib.suppress(GenerationError):
            await cancel_prompt(self.backend, self.sub.prompt_id)
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

    async def _after_last_frame(self) -> Outcome | None:
        """The prompt's last frame came: conclude from its history; None when the backend does not answer,
        and the run polls it, which tolerates that like at any other time."""
        try:
            entry = await self._final_history()
        except GenerationError:
            self.poll_failures += 1
            self.sub.blind = True
            self.next_look = time.time()
            return None
        return await self._conclude(entry)

    async def _final_history(self) -> HistoryEntry | None:
        """The history entry after the prompt's last frame. ComfyUI writes it before that frame; slow
        proxies and backends answer seconds late, so look again (backing off) for up to ``lost_grace_s``."""
        give_up = time.time() + self.policy.lost_grace_s
        delay = 0.05
        while True:
            if (entry := await self.backend.history(self.sub.prompt_id)) is not None:
                return entry
            left = give_up - time.time()
            if left <= 0:
                return None  # the last look came after the whole grace
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, self.policy.poll_s)

    async def _conclude(self, entry: HistoryEntry | None) -> Outcome:
        if entry is None:
            return ev.Failed(ev.FailureCode.PROMPT_LOST, "the backend finished the prompt but has no history for it")
        if entry.succeeded:
            return self.output_failure or await self._store_outputs(entry)
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
        """Download every output (staged, hidden), then publish them all at once: a run that fails on its
        third output never lists, keeps or serves the first two."""
        if self.started_at is None:
            await self._mark_started()
        execution_s = _server_duration(entry) or time.time() - (self.started_at or self.accepted_at)
        await self.writer.update(current_state=CurrentState("downloading"))
        record = self.writer.record
        done = {
            e.metadata.backend_ref for e in (*record.entities, *record.staged) if isinstance(e.metadata, OutputMeta)
        }
        for download in outputs.select_downloads(entry.outputs, self.options.include_previews):
            ref = download.ref
            if (download.node_id, ref.filename, ref.subfolder, ref.type) in done:
                continue  # stored before a restart
            self._check_owner()
            try:
                async with self.policy.downloads:
                    await self._stage(download)
            except GenerationError as exc:
                return ev.Failed(
                    ev.FailureCode.OUTPUT_FAILED, f"output {ref.filename!r}: {exc}", node_id=download.node_id
                )
            except OSError as exc:
                message = self.writer.storage.failed(exc, f"storing output {ref.filename!r}")
                return ev.Failed(ev.FailureCode.STORAGE_ERROR, message, node_id=download.node_id)
            if self.writer.failure:
                return ev.Failed(ev.FailureCode.STORAGE_ERROR, self.writer.failure)
        published = await self.writer.publish()
        if self.writer.failure:
            return ev.Failed(ev.FailureCode.STORAGE_ERROR, self.writer.failure)
        every = stored_outputs(self.writer.record, self.policy.media_url)
        new = {e.filename for e in published}
        for output in every:
            if output.filename in new:
                self.handle.publish(ev.OutputReady(output))
        queue_wait_s = (self.started_at or self.accepted_at) - self.accepted_at
        return ev.Completed(every, queue_wait_s, execution_s)

    async def _stage(self, download: outputs.Download, chunks: AsyncIterator[bytes] | None = None) -> None:
        sequence = self.writer.record.next_sequence
        ref = download.ref
        run_id = self.handle.run_id
        file = await outputs.store(
            chunks if chunks is not None else self.backend.download(ref),
            self.writer.store.run_dir(run_id),
            sequence,
            ref.filename,
            lambda name: self.writer.store.staged_path(run_id, name),
        )
        self.metrics.bytes_downloaded.inc(file.size_bytes)
        meta = OutputMeta(
            format=file.format.ext,
            mime=file.format.mime,
            size_bytes=file.size_bytes,
            sha256=file.sha256,
            node_id=download.node_id,
            filename=ref.filename,
            subfolder=ref.subfolder,
            type=ref.type,
        )
        await self.writer.stage(Entity(sequence, file.format.kind.entity_type, file.filename, utc_now(), meta))
        logger.info("run %s stored %s (%d bytes)", run_id, file.filename, file.size_bytes, extra=self.log)

    async def _finish(self, outcome: Outcome) -> None:
        """Record the outcome, then publish it: whoever sees the terminal event finds the record final."""
        if self.unannounced and not isinstance(outcome, ev.Failed):
            self._announce()
        changes: dict[str, Any] = {"finished_at": utc_now(), "last_seq": self.handle.last_seq + 1}
        if isinstance(outcome, ev.Completed):
            status = RunStatus.COMPLETED
            changes["timings"] = Timings(round(outcome.queue_wait_s, 3), round(outcome.execution_s, 3))
        else:
            await self.writer.discard_outputs()
            if isinstance(outcome, ev.Failed):
                status = RunStatus.FAILED
                changes["error"] = outcome
            else:
                status = RunStatus.CANCELLED
                changes["cancel_reason"] = outcome.reason
        await self.writer.update(status=status, current_state=CurrentState(status.value), durable=True, **changes)
        if self.latest_preview is not None:
            await self.latest_preview.finish(keep=self.options.keep_preview)
        if isinstance(outcome, ev.Completed) and (measured := self.clock.measured(self.ended_at or time.time())):
            await self.policy.durations.measured(self.writer.record.backend, self.profile_key, measured)
        self.handle.publish(outcome)
        self.metrics.runs.labels(outcome=status.value, template=self.template).inc()
        if isinstance(outcome, ev.Completed):
            self.metrics.execution.observe(outcome.execution_s)
        logger.info("run %s %s", self.handle.run_id, status.value, extra=self.log)


def _server_duration(entry: HistoryEntry) -> float | None:
    start, end = entry.message("execution_start"), entry.message("execution_success")
    if start and end and isinstance(start.get("timestamp"), int) and isinstance(end.get("timestamp"), int):
        return max(0.0, (int(end["timestamp"]) - int(start["timestamp"])) / 1000)
    return None


def _scrub(message: str) -> str:
    """Remove the backend host's directories from an error message (ComfyUI includes absolute paths)."""
    return _SERVER_PATH.sub(r"\1", message)
