"""Runs: starting them (idempotently, within a bound), watching, listing and cancelling them, and
picking up the unfinished ones after a restart.

Each run lives in a background task (its Follower) that owns it; callers watch it through its
RunHandle, so a run is not tied to the connection that started it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from comfy_generation.runstore import (
    CurrentState,
    DamagedRecord,
    InvalidRunId,
    RunMissing,
    RunOptions,
    RunRecord,
    RunStatus,
    RunStore,
    new_run_id,
    parse_run_id,
    utc_now,
)
from comfy_generation.runstore import events as ev
from comfy_generation.runstore.schema import JsonValue
from generation_service import run_index, workflow
from generation_service.backend import DetachedBackend, Subscription, cancel_prompt
from generation_service.comfy_replies import node_problems
from generation_service.errors import (
    BackendUnavailable,
    GenerationError,
    InvalidRequest,
    RequestConflict,
    RunDamaged,
    RunNotFound,
    StorageUnavailable,
    TooManyRuns,
    WorkflowRejected,
)
from generation_service.follower import SOCKET_WAIT_S, Follower, FollowPolicy
from generation_service.metrics import Metrics
from generation_service.pool import BackendPool, Member
from generation_service.run_handle import BackendLost, RunHandle, RunView, StorageFailure
from generation_service.run_index import RunIndex
from generation_service.run_summary import RunSummary, summarize
from generation_service.run_writer import NewRun, RunWriter
from generation_service.storage_health import StorageHealth
from generation_service.templating import DEFAULT_MAX_MEDIA_BYTES, ParamValue, TemplateCatalog, bind_uploads
from generation_service.templating.media import PendingUpload

logger = logging.getLogger(__name__)

SUBMISSIONS_AT_ONCE = 16  # runs being recorded and submitted at once; more wait in line
MAX_REQUEST_ID = 128


@dataclass(frozen=True)
class RunSpec:
    """What a caller asked for, free of protobuf."""

    workflow_json: str
    workflow_name: str = ""
    include_previews: bool = False
    request_id: str = ""
    queue_timeout_s: float | None = None
    execution_timeout_s: float | None = None
    template: str = ""
    params: dict[str, ParamValue] = field(default_factory=dict)
    retry_on_backend_loss: bool = False
    backend_labels: tuple[str, ...] = ()
    live_previews: bool = False
    keep_preview: bool = False

    @property
    def fingerprint(self) -> str:
        """What makes two requests the same request (timeouts are how to run it, not what)."""
        params = {k: hashlib.sha256(v).hexdigest() if isinstance(v, bytes) else v for k, v in self.params.items()}
        content = json.dumps(
            [self.workflow_json, self.workflow_name, self.include_previews, self.template, params], sort_keys=True
        )
        return hashlib.sha256(content.encode()).hexdigest()


@dataclass(frozen=True)
class _Prepared:
    """The workflow to submit, and what a template made of the request."""

    graph: dict[str, Any]
    template: str = ""
    params: dict[str, JsonValue] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    uploads: tuple[PendingUpload, ...] = ()


class Runner:
    """Starts runs and keeps them going; shared by every RPC of the process."""

    def __init__(
        self,
        store: RunStore,
        pool: BackendPool,
        policy: FollowPolicy,
        *,
        storage: StorageHealth | None = None,
        defaults: RunOptions | None = None,
        max_in_flight: int = 1000,
        metrics: Metrics | None = None,
        templates: TemplateCatalog | None = None,
        max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    ) -> None:
        self.templates = templates
        self.max_media_bytes = max_media_bytes
        self.store = store
        self.storage = storage or StorageHealth(store.root)
        self.pool = pool
        self.policy = policy
        self.defaults = defaults or RunOptions()
        self.metrics = metrics or Metrics()
        self.metrics.runs_in_flight.set_function(lambda: len(self.runs))
        self.max_in_flight = max_in_flight
        self.runs: dict[str, RunHandle] = {}  # live runs only
        self.index = RunIndex()
        self._request_locks: dict[str, asyncio.Lock] = {}
        self._admission = asyncio.Semaphore(SUBMISSIONS_AT_ONCE)
        self._submitting = 0

    # -- starting ---------------------------------------------------------------------------------

    async def start(self, spec: RunSpec) -> RunView:
        """Start a run, or return the run this request_id already started. Raises GenerationError
        before anything ran."""
        check_request_id(spec.request_id)
        if not spec.request_id:
            return await self._start_new(spec)
        # One submission per request_id at a time, so simultaneous retries cannot start two runs.
        async with self._request_locks.setdefault(spec.request_id, asyncio.Lock()):
            if (known := self.index.run_for_request(spec.request_id)) is not None:
                run_id, fingerprint = known
                if fingerprint != spec.fingerprint:
                    raise RequestConflict(
                        f"request_id {spec.request_id!r} was already used for a different request (run {run_id}); "
                        "use a new request_id for a new request"
                    )
                return self.runs.get(run_id) or await self._replay(run_id)
            return await self._start_new(spec)

    async def _start_new(self, spec: RunSpec, run_id: str = "") -> RunHandle:
        if not self.storage.ok:
            raise StorageUnavailable(f"{self.storage.problem}; new runs are refused until it is writable")
        run_id = run_id or new_run_id()
        await self._reserve(run_id)
        options = RunOptions(
            include_previews=spec.include_previews,
            queue_timeout_s=spec.queue_timeout_s or self.defaults.queue_timeout_s,
            execution_timeout_s=spec.execution_timeout_s or self.defaults.execution_timeout_s,
            retry_on_backend_loss=spec.retry_on_backend_loss,
            backend_labels=spec.backend_labels,
            live_previews=spec.live_previews,
            keep_preview=spec.keep_preview,
        )
        self._submitting += 1
        try:
            # A burst of submissions waits in line here, so that the runs already going keep
            # getting their progress delivered (submissions and progress share the event loop).
            async with self._admission:
                return await self._admit(spec, run_id, options)
        finally:
            self._submitting -= 1

    # Hooks where replica mode (replicas/runner.py) shares what one process keeps to itself here.

    async def _reserve(self, run_id: str) -> None:
        """Take one of the ``max_in_flight`` places for a new run, or raise TooManyRuns."""
        if len(self.runs) + self._submitting >= self.max_in_flight:
            raise TooManyRuns(
                f"{self.max_in_flight} runs are in flight, the most this service accepts",
                retry_after_s=max(1.0, self.policy.keepalive_s),
            )

    async def _unreserve(self, run_id: str) -> None:
        """Give back the place of a run that was not started."""

    async def _created(self, writer: RunWriter) -> None:
        """The run's folder exists and this process owns it; next it is submitted."""
        self.index.track(writer)

    async def _before_dispatch(self) -> None:
        """About to choose a backend for a new run."""

    def _ended(self, run_id: str) -> None:
        """The run this process followed reached its terminal event (or was handed to another owner)."""

    async def _admit(self, spec: RunSpec, run_id: str, options: RunOptions) -> RunHandle:
        """Record and submit one run (``_start_new`` bounds how many do this at once)."""
        try:
            writer, member, submitted = await self._record(spec, run_id, options)
        except BaseException:
            await self._unreserve(run_id)  # no run was created: its place is free again
            raise
        await self._created(writer)
        submission = asyncio.create_task(self._submit(writer, member, submitted, spec))
        try:
            # Shielded: a caller that goes away mid-POST must not leave a prompt nobody follows.
            return await asyncio.shield(submission)
        except asyncio.CancelledError:
            submission.add_done_callback(_cancel_if_accepted)
            raise

    async def _record(
        self, spec: RunSpec, run_id: str, options: RunOptions
    ) -> tuple[RunWriter, Member, dict[str, Any]]:
        """Fill in the workflow, choose its backend, upload its inputs and create the run's folder."""
        prepared = await self._prepare(spec, run_id)
        classes = frozenset(str(node["class_type"]) for node in prepared.graph.values())
        await self._before_dispatch()
        member = self.pool.choose(classes, frozenset(spec.backend_labels))
        names = [
            await member.client.upload(await asyncio.to_thread(u.read_bytes), u.filename, u.subfolder)
            for u in prepared.uploads
        ]
        graph = bind_uploads(prepared.graph, prepared.uploads, names) if prepared.uploads else prepared.graph
        submitted = workflow.with_run_prefixes(graph, run_id)
        new = NewRun(
            prompt_id=str(uuid.uuid4()),
            backend=member.name,
            uploaded_inputs=bool(prepared.uploads),
            workflow_name=spec.workflow_name,
            options=options,
            request_id=spec.request_id,
            fingerprint=spec.fingerprint,
            template=prepared.template,
            params=prepared.params,
            seeds=prepared.seeds,
        )
        try:
            writer = await asyncio.to_thread(RunWriter.create, self.store, self.storage, run_id, new, submitted)
        except OSError as exc:
            message = self.storage.failed(exc, "creating the run's folder")
            raise StorageUnavailable(f"{message}; the run was not started") from exc
        return writer, member, submitted

    async def _prepare(self, spec: RunSpec, run_id: str) -> _Prepared:
        """Parse the raw workflow, or fill in the template (uploading its input media)."""
        if not spec.template:
            if spec.params:
                raise InvalidRequest("params go with a template; a raw workflow takes none")
            return _Prepared(workflow.parse(spec.workflow_json))
        if self.templates is None:
            raise InvalidRequest("this service has no templates (its templates_dir setting is empty)")
        await asyncio.to_thread(self.templates.reload)  # picks up templates dropped into the folder
        applied = await asyncio.to_thread(
            self.templates.apply,
            spec.template,
            spec.params,
            run_id=run_id,
            store=self.store,
            max_media_bytes=self.max_media_bytes,
        )
        return _Prepared(applied.workflow, applied.template, applied.values, applied.seeds, tuple(applied.uploads))

    async def _submit(self, writer: RunWriter, member: Member, submitted: dict[str, Any], spec: RunSpec) -> RunHandle:
        record = writer.record
        backend = member.client
        sub = backend.subscribe(record.prompt_id)
        self.pool.dispatched(member, record.prompt_id, _tell_lost(sub))
        try:
            await backend.wait_connected(SOCKET_WAIT_S)
            dropped = node_problems(await backend.submit(sub, submitted))
            if dropped:
                # ComfyUI queued only the valid outputs; a partial run is not what was asked for.
                await cancel_prompt(backend, record.prompt_id)
                raise WorkflowRejected("some output nodes failed validation", tuple(dropped))
        except GenerationError as exc:
            backend.unsubscribe(sub)
            member.release(record.prompt_id)
            code = (
                ev.FailureCode.BACKEND_UNAVAILABLE
                if isinstance(exc, BackendUnavailable)
                else ev.FailureCode.INVALID_WORKFLOW
            )
            problems = exc.problems if isinstance(exc, WorkflowRejected) else ()
            await writer.update(
                status=RunStatus.FAILED,
                current_state=CurrentState("rejected"),
                finished_at=utc_now(),
                durable=True,
                error=ev.Failed(code, str(exc), node_errors=problems),
            )
            writer.close()
            self._ended(record.run_id)
            logger.info("run %s rejected: %s", record.run_id, exc, extra=_context(record))
            raise
        handle = self._attach(writer, sub, past=[])
        handle.publish(
            ev.Accepted(record.prompt_id, record.backend, record.workflow, record.template, tuple(record.seeds.items()))
        )
        if spec.request_id:
            self.index.remember_request(spec.request_id, record.run_id)
        logger.info(
            "run %s accepted as prompt %s on backend %s",
            record.run_id,
            record.prompt_id,
            member.name,
            extra=_context(record),
        )
        self._follow(handle, writer, sub, submitted, member)
        return handle

    def _attach(self, writer: RunWriter, sub: Subscription, past: list[ev.RunEvent]) -> RunHandle:
        handle = RunHandle(writer.run_id, sub.frames, writer, past)
        writer.on_failure = lambda message: handle.inbox.put_nowait(StorageFailure(message))
        self.runs[writer.run_id] = handle
        return handle

    def _follow(
        self, handle: RunHandle, writer: RunWriter, sub: Subscription, graph: dict[str, Any], member: Member | None
    ) -> None:
        follower = Follower(self.pool, member, self.policy, handle, writer, sub, graph, self.metrics)
        handle.task = asyncio.create_task(follower.run(), name=f"run-{writer.run_id}")
        handle.task.add_done_callback(lambda _: self._followed_to_end(handle))

    def _followed_to_end(self, handle: RunHandle) -> None:
        if self.runs.get(handle.run_id) is handle:  # (a replica may follow the run again since)
            del self.runs[handle.run_id]
        if handle.finished:
            self._ended(handle.run_id)

    # -- reading ----------------------------------------------------------------------------------

    async def _replay(self, run_id: str) -> RunHandle:
        """A read-only handle over a finished run's journaled events."""
        try:
            past = await asyncio.to_thread(self.store.read_events, run_id)
        except DamagedRecord as exc:
            raise RunDamaged(str(exc)) from exc
        return RunHandle.replay(run_id, past)

    def _known(self, run_id: str) -> str:
        try:
            parse_run_id(run_id)
        except InvalidRunId as exc:
            raise InvalidRequest(f"run_id {run_id[:80]!r}: {exc}") from exc
        if (damage := self.index.damage(run_id)) is not None:
            raise RunDamaged(f"{damage}; the run is not resumed or listed until its folder is repaired or removed")
        if run_id not in self.index:
            raise RunNotFound(f"no run {run_id}")
        return run_id

    async def watch(self, run_id: str, after_seq: int = 0) -> AsyncIterator[ev.RunEvent]:
        """The run's events after ``after_seq``: replayed from its journal, then live until it ends."""
        self._known(run_id)
        handle = self.runs.get(run_id) or await self._replay(run_id)
        return handle.events(after_seq)

    async def get(self, run_id: str) -> RunSummary:
        self._known(run_id)
        live = self.runs.get(run_id)
        if live is not None and live.writer is not None:
            return summarize(live.writer.record, self.policy.media_url, live.last_seq)
        try:
            record = await asyncio.to_thread(self.store.read_record, run_id)
        except RunMissing as exc:
            raise RunNotFound(f"run {run_id} has no record") from exc
        except DamagedRecord as exc:
            raise RunDamaged(str(exc)) from exc
        return summarize(record, self.policy.media_url, record.last_seq)

    async def list_runs(
        self, statuses: frozenset[RunStatus], page_size: int, page_token: str
    ) -> tuple[list[RunSummary], str]:
        """Runs newest first; the token is the position after the last run of the previous page."""
        run_ids, token = self.index.page(statuses, page_size, page_token)
        summaries = []
        for run_id in run_ids:
            try:
                summaries.append(await self.get(run_id))
            except (RunNotFound, RunDamaged):
                continue  # removed or damaged since it was indexed: GetRun says which
        return summaries, token

    async def cancel(self, run_id: str, reason: str) -> RunSummary:
        """Cancel a run and wait until it has ended; a finished run is returned as it is."""
        self._known(run_id)
        if (handle := self.runs.get(run_id)) is not None:
            handle.cancel(reason)
            await handle.wait_finished()
        return await self.get(run_id)

    # -- start-up and shutdown --------------------------------------------------------------------

    async def recover(self) -> int:
        """Index run storage and re-attach every unfinished run by its prompt id; returns how many.

        Needs no backend: a resumed run follows its prompt once the backend answers. A damaged run
        folder is logged, counted and left alone; it never stops the service.
        """
        found = await asyncio.to_thread(run_index.scan, self.store)
        resumed = 0
        for run_id, loaded in found.items():
            if isinstance(loaded, DamagedRecord):
                self._damaged(loaded)
                continue
            writer = RunWriter(self.store, loaded.record, self.storage)
            self.index.track(writer)
            if loaded.record.request_id and loaded.events:
                self.index.remember_request(loaded.record.request_id, run_id)
            if not loaded.record.status.is_terminal:
                try:
                    graph = await asyncio.to_thread(self.store.read_workflow, run_id)
                except DamagedRecord as exc:
                    self._damaged(exc)
                    continue
                await self._resume(writer, loaded.events, graph)
                resumed += 1
        return resumed

    def _damaged(self, exc: DamagedRecord) -> None:
        logger.error("damaged run folder, not resumed: %s", exc, extra={"run_id": exc.run_id})
        self.index.mark_damaged(exc.run_id, str(exc))
        self.metrics.damaged_runs.inc()

    async def _resume(self, writer: RunWriter, past: list[ev.RunEvent], graph: dict[str, Any]) -> None:
        await asyncio.to_thread(writer.resume)
        # Progress reaches the record a moment after the journal: a killed process can leave a record
        # that says accepted for a run whose journal says it started. The journal is the truth.
        journaled = _journaled_state(past)
        if journaled is not None and _PROGRESS.index(journaled.step) > _PROGRESS.index(writer.record.status):
            await writer.update(status=RunStatus(journaled.step), current_state=journaled)
        record = writer.record
        member = self.pool.get(record.backend)  # None: the backend left the pool; the run moves or fails
        sub = (member.client if member else DetachedBackend(record.backend)).subscribe(record.prompt_id)
        sub.blind = True  # its events went to the previous process's socket
        if member is not None:
            self.pool.dispatched(member, record.prompt_id, _tell_lost(sub), resumed=True)
        handle = self._attach(writer, sub, past)
        logger.info(
            "run %s resumed after a restart (prompt %s, %d events so far)",
            record.run_id,
            record.prompt_id,
            len(past),
            extra=_context(record),
        )
        self._follow(handle, writer, sub, graph, member)

    async def close(self) -> None:
        """Stop following (runs stay unfinished in storage and are resumed by the next start)."""
        handles = list(self.runs.values())
        tasks = [h.task for h in handles if h.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(h.writer.drain() for h in handles if h.writer is not None))
        for handle in handles:
            handle.close()


_PROGRESS = (RunStatus.ACCEPTED, RunStatus.QUEUED, RunStatus.RUNNING)


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID or not (request_id.isascii() and request_id.isprintable()):
        raise InvalidRequest(f"request_id must be at most {MAX_REQUEST_ID} printable ASCII characters")


def _journaled_state(past: list[ev.RunEvent]) -> CurrentState | None:
    """How far an unfinished run got by its journal: running once started, else queued at its last position."""
    if any(isinstance(e.body, ev.Started) for e in past):
        return CurrentState(RunStatus.RUNNING.value)
    queued = [e.body.position for e in past if isinstance(e.body, ev.Queued)]
    return CurrentState(RunStatus.QUEUED.value, position=queued[-1]) if queued else None


def _context(record: RunRecord) -> dict[str, str]:
    """The fields every lifecycle log line carries (see comfy_generation.logformat)."""
    return {"run_id": record.run_id, "prompt_id": record.prompt_id, "template": record.template}


def _tell_lost(sub: Subscription) -> Callable[[Member], None]:
    """How the pool tells a run that its backend was lost: through the run's inbox."""
    return lambda member: sub.frames.put_nowait(BackendLost(member.name))


def _cancel_if_accepted(submission: asyncio.Task[RunHandle]) -> None:
    if not submission.cancelled() and submission.exception() is None:
        submission.result().cancel("the client went away before the run was accepted")
