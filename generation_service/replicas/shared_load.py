"""The backends' load as every replica sees it: the prompts dispatched to each backend, by any replica,
and not yet seen in its queue. Without this, replicas choosing at once would all pick the same idle
backend (each sees only its own dispatches until the next queue snapshot)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from generation_service.errors import RedisUnavailable
from generation_service.pool import BackendPool
from generation_service.replicas.link import RedisLink

UNSEEN_S = 120.0  # a dispatch not seen in the queue by then was lost or long started: no longer counted
REFRESH_TIMEOUT_S = 0.5  # dispatch goes on with what this replica knows when Redis is slow


class SharedLoad:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._writes: set[asyncio.Task[Any]] = set()

    def dispatched(self, backend: str, prompt_id: str) -> None:
        self._write(self.link.redis.zadd(self.link.keys.unseen(backend), {prompt_id: time.time()}))

    def gone(self, backend: str, prompt_id: str) -> None:
        self._write(self.link.redis.zrem(self.link.keys.unseen(backend), prompt_id))

    def _write(self, command: Any) -> None:
        # Best effort: a lost write is forgotten after UNSEEN_S, or when the prompt shows in the queue.
        task = asyncio.ensure_future(self.link.call("sharing backend load", lambda: command))
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: RedisUnavailable is expected while Redis is away

    async def refresh(self, pool: BackendPool) -> None:
        """Read what the other replicas dispatched to each backend of ``pool``."""
        members = list(pool.members.values())
        cutoff = time.time() - UNSEEN_S

        async def read() -> list[Any]:
            async with self.link.redis.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.zremrangebyscore(self.link.keys.unseen(member.name), "-inf", cutoff)
                    pipe.zrange(self.link.keys.unseen(member.name), 0, -1)
                return list(await pipe.execute())

        with contextlib.suppress(RedisUnavailable, TimeoutError):
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                replies = await self.link.call("reading backend load", read)
            for member, prompts in zip(members, replies[1::2], strict=True):
                member.elsewhere = set(prompts) - member.seen - member.unseen.keys()

    async def close(self) -> None:
        for task in list(self._writes):
            task.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)
