"""Which replica owns which run, the takeover of a dead replica's runs, and the shared in-flight limit.

Every unfinished run is one entry of the active-runs stream, and the replica that owns it is the
consumer holding that entry in the ``owners`` group's pending list:

* a new run is added and delivered to its replica in one transaction (XADD then XREADGROUP), so no
  entry ever waits undelivered for another replica to pick up;
* the owner resets its entries' idle time every ``refresh_s`` (XCLAIM to itself) for the runs it still
  follows (the run folder's mark, fence.py, says it still may write them);
* every replica claims entries idle longer than ``min_idle_ms`` (XAUTOCLAIM): the runs of a replica that
  died, froze or lost its network. XAUTOCLAIM resets the idle time of what it claims, so two replicas
  never both claim one run;
* the owner of a finished run acknowledges and deletes its entry.

The in-flight limit is a sorted set of run ids: a place is reserved (under WATCH, so concurrent
reservations cannot pass the limit together) with an expiry, made permanent when the run is registered
and given back when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ResponseError, WatchError

from generation_service.errors import RedisUnavailable, TooManyRuns
from generation_service.replicas.keys import OWNERS_GROUP
from generation_service.replicas.link import RedisLink, read_entries, stream_entries

logger = logging.getLogger(__name__)

RESERVATION_S = 300.0  # a place reserved for a run that is being recorded and submitted
GONE_CONSUMER_MS = 3600_000  # a replica that owns nothing and was not heard of for an hour is forgotten
CLEANUP_S = 60.0
HANDED_OVER_IDLE_MS = 10 * 365 * 86400_000  # what a stopping replica sets: claimable at once

Claimed = Callable[[str], Awaitable[None]]


class Ownership:
    def __init__(self, link: RedisLink, takeover_s: float) -> None:
        self.link = link
        self.keys = link.keys
        self.me = link.replica
        self.refresh_s = takeover_s / 5
        self.claim_s = takeover_s / 10
        # An owner's entries are at most refresh_s idle (plus its lateness): claimed only well past that.
        self.min_idle_ms = int(takeover_s * 0.8 * 1000)
        self.mine: dict[str, str] = {}  # run id -> its entry id
        self.still_mine: Callable[[str], bool] = lambda run_id: True
        self.on_claimed: Claimed = _nothing
        self.on_state_lost: Callable[[], Awaitable[None]] = _nothing_lost
        self._unreleased: set[str] = set()  # runs that ended while Redis was unreachable

    # -- joining --------------------------------------------------------------------------------

    async def join(self) -> None:
        """Create the stream and its group if this Redis has neither (first start, or data lost)."""

        async def create() -> None:
            try:
                await self.link.redis.xgroup_create(self.keys.active, OWNERS_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        await self.link.call("creating the owners group", create)

    async def registered(self) -> dict[str, str]:
        """Every unfinished run registered in Redis: run id -> entry id."""
        reply = await self.link.call("listing runs in flight", lambda: self.link.redis.xrange(self.keys.active))
        return {fields["run_id"]: entry_id for entry_id, fields in stream_entries(reply) if "run_id" in fields}

    # -- new runs -------------------------------------------------------------------------------

    async def register(self, run_id: str) -> None:
        """Add the run and take it, in one transaction; its place in flight becomes permanent."""

        async def transaction() -> list[Any]:
            async with self.link.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(self.keys.active, {"run_id": run_id})
                pipe.xreadgroup(OWNERS_GROUP, self.me, {self.keys.active: ">"})
                pipe.zadd(self.keys.slots, {run_id: float("inf")})
                result: list[Any] = await pipe.execute()
                return result

        added, delivered, _ = await self.link.call("registering a run", transaction)
        self.mine[run_id] = added
        await self._take_strays(delivered, added)

    async def register_orphan(self, run_id: str) -> bool:
        """Register an unfinished run found in run storage that Redis does not know (Redis lost its data,
        or replica mode is new to this run storage). False: another replica registered it first."""

        async def transaction() -> tuple[bool, list[Any]]:
            async with self.link.redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(self.keys.active)
                        entries = stream_entries(await pipe.xrange(self.keys.active))
                        if any(fields.get("run_id") == run_id for _, fields in entries):
                            return False, []
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.xadd(self.keys.active, {"run_id": run_id})
                        pipe.xreadgroup(OWNERS_GROUP, self.me, {self.keys.active: ">"})
                        pipe.zadd(self.keys.slots, {run_id: float("inf")})
                        return True, list(await pipe.execute())
                    except WatchError:
                        await asyncio.sleep(random.uniform(0, 0.01))

        won, result = await self.link.call("registering a run found in run storage", transaction)
        if won:
            self.mine[run_id] = result[0]
            await self._take_strays(result[1], result[0])
        return won

    async def _take_strays(self, delivered: Any, own_entry: str) -> None:
        """Entries delivered along with our own (none, unless Redis lost part of its state): ours now."""
        for entry_id, fields in read_entries(delivered):
            if entry_id != own_entry and "run_id" in fields:
                await self._claimed(fields["run_id"], entry_id)

    # -- the in-flight limit --------------------------------------------------------------------

    async def reserve(self, run_id: str, limit: int, retry_after_s: float) -> None:
        """A place in flight for a new run, or TooManyRuns when ``limit`` runs hold one (all replicas)."""

        async def attempt() -> bool:
            await self.link.redis.zremrangebyscore(self.keys.slots, "-inf", time.time())  # never registered
            async with self.link.redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(self.keys.slots)
                        if await pipe.zcard(self.keys.slots) >= limit:
                            return False
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.zadd(self.keys.slots, {run_id: time.time() + RESERVATION_S})
                        await pipe.execute()
                        return True
                    except WatchError:
                        await asyncio.sleep(random.uniform(0, 0.005))

        if not await self.link.call("reserving a place for a run", attempt):
            raise TooManyRuns(
                f"{limit} runs are in flight across the replicas, the most this service accepts",
                retry_after_s=retry_after_s,
            )

    async def unreserve(self, run_id: str) -> None:
        try:
            await self.link.call("giving back a place", lambda: self.link.redis.zrem(self.keys.slots, run_id))
        except RedisUnavailable:
            pass  # the reservation expires by itself

    # -- ending ---------------------------------------------------------------------------------

    async def release(self, run_id: str) -> None:
        """The run ended: its entry and its place go (kept for later while Redis is unreachable)."""
        entry_id = self.mine.pop(run_id, None)
        if entry_id is None:
            return

        async def transaction() -> None:
            async with self.link.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.keys.active, OWNERS_GROUP, entry_id)
                pipe.xdel(self.keys.active, entry_id)
                pipe.zrem(self.keys.slots, run_id)
                await pipe.execute()

        try:
            await self.link.call("releasing a finished run", transaction)
        except RedisUnavailable:
            self.mine[run_id] = entry_id
            self._unreleased.add(run_id)

    def forget(self, run_id: str) -> None:
        """Another replica took the run over: its entry is no longer this replica's to refresh."""
        self.mine.pop(run_id, None)

    async def hand_over(self) -> None:
        """Stopping: mark every entry of ours idle for ages, so that another replica claims it at once."""
        ids: list[Any] = list(self.mine.values())
        if ids:
            await self.link.call(
                "handing runs over",
                lambda: self.link.redis.xclaim(
                    self.keys.active, OWNERS_GROUP, self.me, 0, ids, idle=HANDED_OVER_IDLE_MS, justid=True
                ),
            )

    # -- keeping and taking -----------------------------------------------------------------------

    async def keep(self) -> None:
        """Forever: refresh our entries, claim the idle ones of others, release what ended offline."""
        next_refresh = next_cleanup = 0.0
        while True:
            try:
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + self.refresh_s
                    await self._refresh()
                await self._claim()
                await self._release_backlog()
                if time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + CLEANUP_S
                    await self._forget_gone_consumers()
            except ResponseError as exc:
                await self._refused(exc)
                continue
            except RedisUnavailable:
                await self.link.wait_up()
                # Every owner takes its runs back as Redis answers again (their entries look idle for as
                # long as Redis was away): claim only after they had the time to.
                await asyncio.sleep(self.refresh_s)
                continue
            await asyncio.sleep(self.claim_s)

    async def _refused(self, exc: ResponseError) -> None:
        if "NOGROUP" not in str(exc):
            logger.error("Redis refused an ownership command: %s", exc)
            await asyncio.sleep(self.claim_s)
            return
        # The stream or its group is gone while Redis kept answering (it was flushed): put it all back.
        logger.warning("Redis lost the owners group: this replica registers its runs again")
        try:
            await self.on_state_lost()
        except (RedisUnavailable, ResponseError) as again:
            logger.warning("registering again failed (%s); trying again shortly", again)
            await asyncio.sleep(self.claim_s)

    async def refresh_now(self) -> None:
        await self._refresh()

    async def _refresh(self) -> None:
        for run_id in [r for r in self.mine if not self.still_mine(r)]:
            self.forget(run_id)
        ids: list[Any] = list(self.mine.values())
        if ids:
            await self.link.call(
                "refreshing owned runs",
                lambda: self.link.redis.xclaim(self.keys.active, OWNERS_GROUP, self.me, 0, ids, justid=True),
            )

    async def _claim(self) -> None:
        start = "0-0"
        while True:
            reply = await self.link.call(
                "claiming runs of replicas that stopped answering",
                lambda after=start: self.link.redis.xautoclaim(  # type: ignore[misc]
                    self.keys.active, OWNERS_GROUP, self.me, self.min_idle_ms, start_id=after, count=25
                ),
            )
            start = str(reply[0])
            for entry_id, fields in stream_entries(reply[1]):
                if "run_id" in fields:
                    await self._claimed(fields["run_id"], entry_id)
            if start == "0-0":
                return

    async def _claimed(self, run_id: str, entry_id: str) -> None:
        known = run_id in self.mine
        self.mine[run_id] = entry_id
        if not known:
            logger.warning("run %s taken over from a replica that stopped answering", run_id, extra={"run_id": run_id})
            await self.on_claimed(run_id)

    async def _forget_gone_consumers(self) -> None:
        """Each start of a replica is a new consumer: drop those that own nothing and went long ago."""
        consumers = await self.link.call(
            "listing replicas", lambda: self.link.redis.xinfo_consumers(self.keys.active, OWNERS_GROUP)
        )
        for consumer in consumers:
            name, pending, idle = str(consumer["name"]), int(consumer["pending"]), int(consumer["idle"])
            if name != self.me and pending == 0 and idle > GONE_CONSUMER_MS:
                await self.link.call(
                    "forgetting a replica",
                    lambda gone=name: self.link.redis.xgroup_delconsumer(  # type: ignore[misc]
                        self.keys.active, OWNERS_GROUP, gone
                    ),
                )

    async def _release_backlog(self) -> None:
        for run_id in list(self._unreleased):
            self._unreleased.discard(run_id)
            await self.release(run_id)


async def _nothing(run_id: str) -> None:
    return None


async def _nothing_lost() -> None:
    return None
