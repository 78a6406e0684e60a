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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from comfy_generation.runstore import (
    PARTIAL_SUFFIX,
    InvalidRunId,
    RunStatus,
    RunStore,
    new_run_id,
    parse_run_id,
    utc_now,
)
from generation_service import events as ev
from generation_service import journal, run_index, workflow
from generation_service.comfy import ComfyBackend
from generation_service.comfy_replies import node_problems
from generation_service.errors import (
    BackendUnavailable,
    GenerationError,
    InvalidRequest,
    RequestConflict,
    RunNotFound,
    TooManyRuns,
    WorkflowRejected,
)
from generation_service.follower import Follower, FollowPolicy
from generation_service.metrics import Metrics
from generation_service.run_handle import RunHandle
from generation_service.run_index import RunIndex
from generation_service.run_record import RunOptions, RunRecord, RunSummary, failure_to_json, summarize
from generation_service.templating import DEFAULT_MAX_MEDIA_BYTES, ParamValue, TemplateCatalog, bind_uploads

logger = logging.getLogger(__name__)

SOCKET_WAIT_S = 5.0  # how long a submission waits for the backend websocket before relying on polling
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
    params: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)


class Runner:
    """Starts runs and keeps them going; shared by every RPC of the process."""

    def __init__(
        self,
        store: RunStore,
        backend: ComfyBackend,
        policy: FollowPolicy,
        *,
        defaults: RunOptions | None = None,
        max_in_flight: int = 1000,
        metrics: Metrics | None = None,
        templates: TemplateCatalog | None = None,
        max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    ) -> None:
        self.templates = templates
        self.max_media_bytes = max_media_bytes
        self.store = store
        self.backend = backend
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

    async def start(self, spec: RunSpec) -> RunHandle:
        """Start a run, or return the run this request_id already started. Raises GenerationError
        before anything ran."""
        if len(spec.request_id) > MAX_REQUEST_ID or not (spec.request_id.isascii() and spec.request_id.isprintable()):
            raise InvalidRequest(f"request_id must be at most {MAX_REQUEST_ID} printable ASCII characters")
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
                return self.runs.get(run_id) or self._replay(run_id)
            return await self._start_new(spec)

    async def _start_new(self, spec: RunSpec) -> RunHandle:
        if len(self.runs) + self._submitting >= self.max_in_flight:
            raise TooManyRuns(
                f"{self.max_in_flight} runs are in flight, the most this service accepts",
                retry_after_s=max(1.0, self.policy.keepalive_s),
            )
        options = RunOptions(
            include_previews=spec.include_previews,
            queue_timeout_s=spec.queue_timeout_s or self.defaults.queue_timeout_s,
            execution_timeout_s=spec.execution_timeout_s or self.defaults.execution_timeout_s,
        )
        run_id = new_run_id()
        self._submitting += 1
        try:
            # A burst of submissions waits in line here, so that the runs already going keep
            # getting their progress delivered (submissions and progress share the event loop).
            async with self._admission:
                return await self._admit(spec, run_id, options)
        finally:
            self._submitting -= 1

    async def _admit(self, spec: RunSpec, run_id: str, options: RunOptions) -> RunHandle:
        """Record and submit one run (``_start_new`` bounds how many do this at once)."""
        prepared = await self._prepare(spec, run_id)
        graph = prepared.graph
        submitted = workflow.with_run_prefixes(graph, run_id)
        record = await asyncio.to_thread(
            RunRecord.create,
            self.store,
            run_id,
            prompt_id=str(uuid.uuid4()),
            backend=self.backend.public_url,
            workflow_name=spec.workflow_name,
            workflow=submitted,
            options=options,
            request_id=spec.request_id,
            fingerprint=spec.fingerprint,
            template=prepared.template,
            params=prepared.params,
            seeds=prepared.seeds,
        )
        self.index.track(record)
        submission = asyncio.create_task(self._submit(record, submitted, graph, spec, prepared.seeds))
        try:
            # Shielded: a caller that goes away mid-POST must not leave a prompt nobody follows.
            return await asyncio.shield(submission)
        except asyncio.CancelledError:
            submission.add_done_callback(_cancel_if_accepted)
            raise

    async def _prepare(self, spec: RunSpec, run_id: str) -> _Prepared:
        """Parse the raw workflow, or fill in the template (uploading its input media)."""
        if not spec.template:
            if spec.params:
                raise InvalidRequest("params go with a template; a raw workflow takes none")
            return _Prepared(workflow.parse(spec.workflow_json))
        if self.templates is None:
            raise InvalidRequest("this service has no templates (its templates_dir setting is empty)")
        self.templates.reload()  # cheap: picks up templates dropped into the folder
        applied = await asyncio.to_thread(
            self.templates.apply,
            spec.template,
            spec.params,
            run_id=run_id,
            store=self.store,
            max_media_bytes=self.max_media_bytes,
        )
        names = [
            await self.backend.upload(await asyncio.to_thread(u.read_bytes), u.filename, u.subfolder)
            for u in applied.uploads
        ]
        graph = bind_uploads(applied.workflow, applied.uploads, names)
        return _Prepared(graph, applied.template, applied.values, applied.seeds)

    async def _submit(
        self,
        record: RunRecord,
        submitted: dict[str, Any],
        graph: dict[str, Any],
        spec: RunSpec,
        seeds: dict[str, int],
    ) -> RunHandle:
        sub = self.backend.subscribe(record.prompt_id)
        try:
            await self.backend.wait_connected(SOCKET_WAIT_S)
            dropped = node_problems(await self.backend.submit(sub, submitted))
            if dropped:
                # ComfyUI queued only the valid outputs; a partial run is not what was asked for.
                await self.backend.cancel(record.prompt_id)
                raise WorkflowRejected("some output nodes failed validation", tuple(dropped))
        except GenerationError as exc:
            self.backend.unsubscribe(sub)
            code = (
                ev.FailureCode.BACKEND_UNAVAILABLE
                if isinstance(exc, BackendUnavailable)
                else ev.FailureCode.INVALID_WORKFLOW
            )
            problems = exc.problems if isinstance(exc, WorkflowRejected) else ()
            await record.update(
                status=RunStatus.FAILED,
                current_state={"step": "rejected"},
                finished_at=utc_now(),
                durable=True,
                error=failure_to_json(ev.Failed(code, str(exc), node_errors=problems)),
            )
            logger.info("run %s rejected: %s", record.run_id, exc, extra=_context(record))
            raise
        handle = await self._attach(record, sub, past=[])
        handle.publish(
            ev.Accepted(
                record.prompt_id, self.backend.public_url, spec.workflow_name, spec.template, tuple(seeds.items())
            )
        )
        if spec.request_id:
            self.index.remember_request(spec.request_id, record.run_id)
        logger.info("run %s accepted as prompt %s", record.run_id, record.prompt_id, extra=_context(record))
        self._follow(handle, record, sub, graph)
        return handle

    async def _attach(self, record: RunRecord, sub: Any, past: list[ev.RunEvent]) -> RunHandle:
        log = await asyncio.to_thread(journal.Journal, record.run_dir)  # opening a file may take a while
        handle = RunHandle(record.run_id, sub.frames, log, past)
        self.runs[record.run_id] = handle
        return handle

    def _follow(self, handle: RunHandle, record: RunRecord, sub: Any, graph: dict[str, Any]) -> None:
        follower = Follower(self.backend, self.policy, handle, record, sub, workflow.node_infos(graph), self.metrics)
        handle.task = asyncio.create_task(follower.run(), name=f"run-{record.run_id}")
        handle.task.add_done_callback(lambda _: self.runs.pop(record.run_id, None))

    # -- reading ----------------------------------------------------------------------------------

    def _replay(self, run_id: str) -> RunHandle:
        """A read-only handle over a finished run's persisted events."""
        return RunHandle.replay(run_id, journal.read(self.store.run_dir(run_id), run_id))

    def _known(self, run_id: str) -> str:
        try:
            parse_run_id(run_id)
        except InvalidRunId as exc:
            raise InvalidRequest(f"run_id {run_id[:80]!r}: {exc}") from exc
        if run_id not in self.index:
            raise RunNotFound(f"no run {run_id}")
        return run_id

    def watch(self, run_id: str, after_seq: int = 0) -> AsyncIterator[ev.RunEvent]:
        """The run's events after ``after_seq``: replayed from its log, then live until it ends."""
        self._known(run_id)
        handle = self.runs.get(run_id) or self._replay(run_id)
        return handle.events(after_seq)

    async def get(self, run_id: str) -> RunSummary:
        self._known(run_id)
        metadata = await asyncio.to_thread(self.store.read_metadata, run_id)
        if metadata is None:
            raise RunNotFound(f"run {run_id} has no readable metadata")
        live = self.runs.get(run_id)
        last_seq = live.last_seq if live else int(metadata.get("last_seq") or 0)
        return summarize(metadata, self.policy.media_url, last_seq)

    async def list_runs(
        self, statuses: frozenset[RunStatus], page_size: int, page_token: str
    ) -> tuple[list[RunSummary], str]:
        """Runs newest first; the token is the position after the last run of the previous page."""
        run_ids, token = self.index.page(statuses, page_size, page_token)
        return [await self.get(run_id) for run_id in run_ids], token

    async def cancel(self, run_id: str, reason: str) -> RunSummary:
        """Cancel a run and wait until it has ended; a finished run is returned as it is."""
        self._known(run_id)
        if (handle := self.runs.get(run_id)) is not None:
            handle.cancel(reason)
            await handle.wait_finished()
        return await self.get(run_id)

    # -- start-up and shutdown --------------------------------------------------------------------

    async def recover(self) -> int:
        """Index run storage and re-attach every unfinished run by its prompt id; returns how many."""
        metadata_list = await asyncio.to_thread(run_index.scan, self.store)
        resumed = 0
        for metadata in metadata_list:
            record = RunRecord(self.store, str(metadata["run_id"]), metadata)
            self.index.track(record)
            if record.metadata.get("request_id") and (record.run_dir / journal.EVENTS_FILE).exists():
                self.index.remember_request(str(record.metadata["request_id"]), record.run_id)
            if not record.status.is_terminal:
                await self._resume(record)
                resumed += 1
        return resumed

    async def _resume(self, record: RunRecord) -> None:
        for leftover in record.run_dir.glob(f".*{PARTIAL_SUFFIX}"):
            leftover.unlink(missing_ok=True)  # a download cut off by the restart
        past = await asyncio.to_thread(journal.read, record.run_dir, record.run_id)
        graph = json.loads((record.run_dir / "01_workflow.json").read_text())
        sub = self.backend.subscribe(record.prompt_id)
        sub.blind = True  # its events went to the previous process's socket
        handle = await self._attach(record, sub, past)
        if not past:
            # The service stopped between recording the run and announcing it: did the POST land?
            if (
                await self.backend.queue_state(record.prompt_id, max_age_s=0) is None
                and await self.backend.history(record.prompt_id) is None
            ):
                self.backend.unsubscribe(sub)
                self.runs.pop(record.run_id, None)
                await record.update(
                    status=RunStatus.FAILED,
                    finished_at=utc_now(),
                    durable=True,
                    error=failure_to_json(
                        ev.Failed(
                            ev.FailureCode.PROMPT_LOST, "the service restarted before the backend took the prompt"
                        )
                    ),
                )
                return
            handle.publish(
                ev.Accepted(
                    record.prompt_id,
                    self.backend.public_url,
                    str(record.metadata["workflow"]),
                    str(record.metadata.get("template") or ""),
                    tuple(record.metadata.get("seeds", {}).items()),
                )
            )
        logger.info(
            "run %s resumed after a restart (prompt %s, %d events so far)", record.run_id, record.prompt_id, len(past)
        )
        self._follow(handle, record, sub, graph)

    async def close(self) -> None:
        """Stop following (runs stay unfinished in storage and are resumed by the next start)."""
        handles = list(self.runs.values())
        tasks = [h.task for h in handles if h.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for handle in handles:
            handle.close()


def _context(record: RunRecord) -> dict[str, str]:
    """The fields every lifecycle log line carries (see logformat)."""
    return {
        "run_id": record.run_id,
        "prompt_id": record.prompt_id,
        "template": str(record.metadata.get("template") or ""),
    }


def _cancel_if_accepted(submission: asyncio.Task[RunHandle]) -> None:
    if not submission.cancelled() and submission.exception() is None:
        submission.result().cancel("the client went away before the run was accepted")
