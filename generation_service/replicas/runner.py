"""The Runner of a replica: the same runs, with what one process kept to itself shared through Redis
(see the package docstring). Runs this replica owns are followed exactly as in single-process mode;
everything else about a run is read from Redis, or from run storage where Redis has nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

from comfy_generation.runstore import (
    DamagedRecord,
    InvalidRunId,
    RunMissing,
    RunRecord,
    RunStatus,
    new_run_id,
    parse_run_id,
)
from comfy_generation.runstore import events as ev
from generation_service import run_index
from generation_service.errors import (
    BackendUnavailable,
    InvalidRequest,
    RedisUnavailable,
    RequestConflict,
    RunDamaged,
    RunNotFound,
)
from generation_service.replicas.fence import Fence
from generation_service.replicas.link import REDIS_DOWN, RedisLink
from generation_service.replicas.mirror import MirrorHub
from generation_service.replicas.ownership import Ownership
from generation_service.replicas.replicator import RunReplicator
from generation_service.replicas.shared_durations import SharedDurations
from generation_service.replicas.shared_index import PENDING_REQUEST_S, SharedIndex
from generation_service.replicas.shared_load import SharedLoad
from generation_service.run_handle import Deposed, RunHandle, RunView
from generation_service.run_summary import RunSummary, summarize
from generation_service.run_writer import RunWriter
from generation_service.runner import Runner, RunSpec, check_request_id

logger = logging.getLogger(__name__)

ACCEPT_POLL_S = 0.05  # how often a duplicate request looks whether the first one's run was accepted


class RemoteRun:
    """A run another replica follows, as the caller that started it (with the same request id) sees it."""

    def __init__(self, runner: ReplicaRunner, run_id: str) -> None:
        self.runner = runner
        self._run_id = run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    def events(self, after_seq: int = 0) -> AsyncIterator[ev.RunEvent]:
        return self.runner.hub.events(self._run_id, after_seq)

    def cancel(self, reason: str) -> None:
        self.runner.background(self.runner.cancel(self._run_id, reason))


class OwnedRun:
    """A run this replica started, as its caller sees it: followed here, and on from Redis should another
    replica take it over meanwhile."""

    def __init__(self, runner: ReplicaRunner, handle: RunHandle) -> None:
        self.runner = runner
        self.handle = handle

    @property
    def run_id(self) -> str:
        return self.handle.run_id

    def events(self, after_seq: int = 0) -> AsyncIterator[ev.RunEvent]:
        return self.runner.watched(self.handle.run_id, after_seq, self.handle)

    def cancel(self, reason: str) -> None:
        if self.handle.writer is not None and self.handle.writer.deposed:
            RemoteRun(self.runner, self.run_id).cancel(reason)
        else:
            self.handle.cancel(reason)


class ReplicaRunner(Runner):
    def __init__(
        self, *args: Any, link: RedisLink, takeover_s: float = 15.0, retention_s: float = 86400.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.link = link
        self.keys = link.keys
        self.retention_s = retention_s
        self.ownership = Ownership(link, takeover_s)
        self.ownership.still_mine = self._still_mine
        self.ownership.on_claimed = self._take_over
        self.ownership.on_state_lost = self._reconcile
        self.shared = SharedIndex(link)
        self.hub = MirrorHub(link, self.store)
        self.load = SharedLoad(link)
        self.pool.share_load(self.load)
        self.replicators: dict[str, RunReplicator] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._looping: list[asyncio.Task[None]] = []
        self._adopted = False  # run storage indexed into Redis by this replica since it started
        link.on_back.append(self._reconcile)
        self.metrics.redis_up.set_function(lambda: 1 if link.up else 0)

    def background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _require_redis(self, what: str) -> None:
        if not self.link.up:
            raise self.link.unavailable(what)

    # -- starting -------------------------------------------------------------------------------

    async def start(self, spec: RunSpec) -> RunView:
        check_request_id(spec.request_id)
        self._require_redis("starting a run")
        if not spec.request_id:
            return self._view(await self._start_new(spec))
        while True:
            run_id = new_run_id()
            first = await self.shared.claim_request(spec.request_id, run_id, spec.fingerprint)
            if first is None:
                return self._view(await self._start_claimed(spec, run_id))
            other_run, fingerprint = first
            if fingerprint != spec.fingerprint:
                raise RequestConflict(
                    f"request_id {spec.request_id!r} was already used for a different request (run {other_run}); "
                    "use a new request_id for a new request"
                )
            view = await self._once_accepted(other_run, spec.request_id)
            if view is not None:
                return view
            # Its run was not started after all (rejected, or its replica failed): claim the id again.

    async def _start_claimed(self, spec: RunSpec, run_id: str) -> RunView:
        try:
            handle = await self._start_new(spec, run_id)
        except BaseException:
            with contextlib.suppress(RedisUnavailable):
                await self.shared.drop_request(spec.request_id, run_id)
            raise
        try:
            await self.shared.keep_request(spec.request_id)
        except RedisUnavailable:
            logger.warning("request id %r of run %s expires in %d s", spec.request_id, run_id, PENDING_REQUEST_S)
        return handle

    async def _once_accepted(self, run_id: str, request_id: str) -> RunView | None:
        """The run a simultaneous request with this request id started, once it is accepted; None when
        the request id was freed (that run was not started)."""
        give_up = time.monotonic() + PENDING_REQUEST_S
        key = self.keys.request(request_id)
        while time.monotonic() < give_up:
            if (handle := self.runs.get(run_id)) is not None:
                return self._view(handle)
            with contextlib.suppress(RunNotFound):  # not recorded yet
                record, last_seq = await self._find(run_id)
                if record.status.is_terminal and last_seq > 0:
                    return await self._replay(run_id)
                if last_seq > 0:
                    return RemoteRun(self, run_id)
            current = await self.link.call("reading a request id", lambda: self.link.redis.get(key))
            if not isinstance(current, str) or run_id not in current:
                return None
            await asyncio.sleep(ACCEPT_POLL_S)
        raise BackendUnavailable(f"the replica that took request_id {request_id!r} has not started its run")

    def _view(self, started: RunView) -> RunView:
        return OwnedRun(self, started) if isinstance(started, RunHandle) else started

    async def _before_dispatch(self) -> None:
        await self.load.refresh(self.pool)
        if isinstance(self.policy.durations, SharedDurations):
            await self.policy.durations.fresh()

    async def _reserve(self, run_id: str) -> None:
        await self.ownership.reserve(run_id, self.max_in_flight, retry_after_s=max(1.0, self.policy.keepalive_s))

    async def _unreserve(self, run_id: str) -> None:
        await self.ownership.unreserve(run_id)

    async def _created(self, writer: RunWriter) -> None:
        run_id = writer.run_id
        try:
            fence = await asyncio.to_thread(Fence.raise_, self.store, run_id, self.link.replica)
            writer.still_owner = fence.held
            await self.ownership.register(run_id)
        except (OSError, RedisUnavailable):
            await self._unreserve(run_id)
            await asyncio.to_thread(shutil.rmtree, self.store.run_dir(run_id), ignore_errors=True)
            raise
        self._replicate(writer, ())

    def _replicate(self, writer: RunWriter, history: Any) -> RunReplicator:
        replicator = RunReplicator(self.link, history, writer.record, self.retention_s)
        self.replicators[writer.run_id] = replicator
        writer.on_change = replicator.record_changed
        replicator.changed()
        return replicator

    def _attach(self, writer: RunWriter, sub: Any, past: list[ev.RunEvent]) -> RunHandle:
        handle = super()._attach(writer, sub, past)
        replicator = self.replicators.get(writer.run_id) or self._replicate(writer, ())
        replicator.history = handle.history
        handle.on_publish = lambda event: replicator.changed()
        handle.on_preview = replicator.preview
        writer.on_deposed = lambda: self._deposed(handle)
        replicator.changed()
        return handle

    def _deposed(self, handle: RunHandle) -> None:
        logger.warning("run %s: another replica owns it now; this one stops writing it", handle.run_id)
        self.metrics.deposed.inc()
        handle.inbox.put_nowait(Deposed())
        handle.log.close()  # watchers here carry on from Redis (see watch)
        self.ownership.forget(handle.run_id)
        replicator = self.replicators.pop(handle.run_id, None)
        if replicator is not None:
            self.background(replicator.stop())

    def _ended(self, run_id: str) -> None:
        self.background(self._retire(run_id))

    async def _retire(self, run_id: str) -> None:
        """A run ended here: once Redis has all of it, its entry and place in flight go."""
        replicator = self.replicators.pop(run_id, None)
        if replicator is not None:
            await replicator.flush()
            await replicator.stop()
        await self.ownership.release(run_id)

    def _still_mine(self, run_id: str) -> bool:
        handle = self.runs.get(run_id)
        return handle is None or handle.writer is None or handle.writer.may_write()

    # -- reading --------------------------------------------------------------------------------

    def _known(self, run_id: str) -> str:
        """A well-formed id of a run whose folder is not known damaged (whether it exists is for Redis and
        run storage to say: this replica keeps no index of its own)."""
        try:
            parse_run_id(run_id)
        except InvalidRunId as exc:
            raise InvalidRequest(f"run_id {run_id[:80]!r}: {exc}") from exc
        if (damage := self.index.damage(run_id)) is not None:
            raise RunDamaged(f"{damage}; the run is not resumed or listed until its folder is repaired or removed")
        return run_id

    async def _find(self, run_id: str) -> tuple[RunRecord, int]:
        """The run's latest record and last seq: from Redis, else from run storage."""
        try:
            found = await self.shared.record(run_id)
        except RedisUnavailable:
            found = None
        if found is not None:
            return found
        try:
            record = await asyncio.to_thread(self.store.read_record, run_id)
        except RunMissing as exc:
            raise RunNotFound(f"no run {run_id}") from exc
        except DamagedRecord as exc:
            raise RunDamaged(str(exc)) from exc
        return record, record.last_seq

    async def get(self, run_id: str) -> RunSummary:
        self._known(run_id)
        live = self.runs.get(run_id)
        if live is not None and live.writer is not None and not live.writer.deposed:
            return summarize(live.writer.record, self.policy.media_url, live.last_seq)
        record, last_seq = await self._find(run_id)
        return summarize(record, self.policy.media_url, last_seq)

    async def watch(self, run_id: str, after_seq: int = 0) -> AsyncIterator[ev.RunEvent]:
        self._known(run_id)
        handle = self.runs.get(run_id)
        if handle is None:
            record, _ = await self._find(run_id)
            if record.status.is_terminal:
                return (await self._replay(run_id)).events(after_seq)
            self._require_redis("watching a run another replica follows")
        return self.watched(run_id, after_seq, handle)

    async def watched(self, run_id: str, after_seq: int, handle: RunHandle | None) -> AsyncIterator[ev.RunEvent]:
        """The run's events after ``after_seq``: from ``handle`` while this replica follows it, then from Redis."""
        last = after_seq
        if handle is not None:
            async for event in handle.events(after_seq):
                yield event
                last = event.seq
            if handle.finished:
                return
        # Followed elsewhere (or taken over from here while this watcher watched): from Redis.
        async for event in self.hub.events(run_id, last):
            yield event

    async def list_runs(
        self, statuses: frozenset[RunStatus], page_size: int, page_token: str
    ) -> tuple[list[RunSummary], str]:
        run_ids, token = await self.shared.page(statuses, page_size, page_token)
        summaries = []
        for run_id in run_ids:
            try:
                summaries.append(await self.get(run_id))
            except (RunNotFound, RunDamaged):
                continue
        return summaries, token

    async def cancel(self, run_id: str, reason: str) -> RunSummary:
        self._known(run_id)
        if run_id in self.runs:
            return await super().cancel(run_id, reason)
        summary = await self.get(run_id)
        if summary.status.is_terminal:
            return summary
        self._require_redis("cancelling a run another replica follows")

        async def ask() -> None:
            async with self.link.redis.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.cancel(run_id), reason, ex=int(self.retention_s))
                pipe.publish(self.keys.cancels, run_id)
                await pipe.execute()

        await self.link.call("asking for a cancel", ask)
        async for event in self.hub.events(run_id, summary.last_seq):
            if event.is_terminal:
                break
        return await self.get(run_id)

    async def _listen_for_cancels(self) -> None:
        """Cancel requests made on other replicas, for runs this one follows."""
        while True:
            try:
                async with self.link.blocking.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.keys.cancels)
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            await self._cancel_if_mine(str(message["data"]))
            except REDIS_DOWN:
                await self.link.wait_up()  # then _reconcile looks at the cancels it may have missed

    async def _cancel_if_mine(self, run_id: str) -> None:
        handle = self.runs.get(run_id)
        if handle is None:
            return
        reason = await self.link.call("reading a cancel", lambda: self.link.redis.get(self.keys.cancel(run_id)))
        if isinstance(reason, str):
            handle.cancel(reason)

    # -- start-up, takeover and reconciliation --------------------------------------------------

    async def recover(self) -> int:
        """Index run storage into Redis and take every unfinished run nobody has registered; the runs of
        replicas that are gone are taken over as their entries go idle."""
        self._looping = [
            asyncio.create_task(self.ownership.keep(), name="ownership"),
            asyncio.create_task(self._listen_for_cancels(), name="cancels"),
        ]
        if isinstance(self.policy.durations, SharedDurations):
            self._looping.append(asyncio.create_task(self.policy.durations.follow(), name="durations"))
        if not self.link.up:
            logger.warning("Redis is unreachable at start-up: runs are indexed and resumed once it answers")
            return 0
        return await self._adopt_storage()

    async def _adopt_storage(self) -> int:
        self._adopted = True
        await self.ownership.join()
        if isinstance(self.policy.durations, SharedDurations):
            await self.policy.durations.load()
        found = await asyncio.to_thread(run_index.scan, self.store)
        loaded = []
        for run_id, item in found.items():
            if isinstance(item, DamagedRecord):
                if self.index.damage(run_id) is None:
                    self._damaged(item)
            else:
                loaded.append(item)
        await self.shared.add((item.record, bool(item.events)) for item in loaded)
        await self.link.call("marking run storage indexed", lambda: self.link.redis.set(self.keys.indexed, "1"))
        registered = await self.ownership.registered()
        adopted = 0
        for item in loaded:
            run_id = item.record.run_id
            if item.record.status.is_terminal or run_id in registered or run_id in self.runs:
                continue
            if await self.ownership.register_orphan(run_id):
                await self._take_over(run_id)
                adopted += 1
        return adopted

    async def _take_over(self, run_id: str) -> None:
        """Follow a run this replica was just given: mark its folder ours, then resume it by prompt id."""
        try:
            record = await asyncio.to_thread(self.store.read_record, run_id)
            past = await asyncio.to_thread(self.store.read_events, run_id)
            graph = None if record.status.is_terminal else await asyncio.to_thread(self.store.read_workflow, run_id)
        except RunMissing:
            logger.error("run %s is registered but has no folder in run storage", run_id, extra={"run_id": run_id})
            await self.ownership.release(run_id)
            return
        except DamagedRecord as exc:
            self._damaged(exc)
            await self.ownership.release(run_id)
            return
        fence = await asyncio.to_thread(Fence.raise_, self.store, run_id, self.link.replica)
        writer = RunWriter(self.store, record, self.storage, still_owner=fence.held)
        if graph is None:
            # It ended, but its owner went before Redis had all of it: put the rest there, then release.
            self._replicate(writer, past)
            await self._retire(run_id)
            return
        await self._resume(writer, past, graph)
        self.metrics.takeovers.inc()
        reason = await self.link.call("reading a cancel", lambda: self.link.redis.get(self.keys.cancel(run_id)))
        if isinstance(reason, str) and (handle := self.runs.get(run_id)) is not None:
            handle.cancel(reason)

    async def _reconcile(self) -> None:
        """Redis answers again: take our runs back before anyone claims them as idle, put back whatever
        Redis lost (from run storage when it lost everything), and look at cancels missed meanwhile."""
        await self.ownership.join()
        mine = {run_id: self.ownership.mine.get(run_id) for run_id in self.runs}
        registered = await self.ownership.registered()
        for run_id, entry in mine.items():
            if entry is not None and registered.get(run_id) == entry:
                continue
            self.ownership.forget(run_id)
            await self.ownership.register_orphan(run_id)  # Redis lost it: ours again, unless taken already
        await self.ownership.refresh_now()
        indexed = await self.link.call("reading the index marker", lambda: self.link.redis.exists(self.keys.indexed))
        if not indexed or not self._adopted:
            if self._adopted:
                logger.warning("Redis lost its data: indexing run storage again")
            await self._adopt_storage()
        for replicator in self.replicators.values():
            replicator.resync()
        for run_id in list(self.runs):
            await self._cancel_if_mine(run_id)

    async def close(self) -> None:
        for task in self._looping:
            task.cancel()
        await asyncio.gather(*self._looping, return_exceptions=True)
        await super().close()
        for replicator in list(self.replicators.values()):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await replicator.flush()
            await replicator.stop()
        with contextlib.suppress(RedisUnavailable):
            await self.ownership.hand_over()
        await self.hub.close()
        await self.load.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
