"""The replica's connection to Redis: one client for commands, one for blocking reads, and whether
Redis answers (health and new calls depend on it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from generation_service.errors import RedisUnavailable, excerpt
from generation_service.replicas.keys import Keys

logger = logging.getLogger(__name__)

T = TypeVar("T")
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)  # BusyLoadingError (AOF loading) included
COMMAND_TIMEOUT_S = 5.0
BLOCK_MS = 5000  # a blocking stream read waits this long before it looks around
PING_S = 1.0


Entry = tuple[str, dict[str, str]]  # a stream entry: its id and fields


def stream_entries(reply: Any) -> list[Entry]:
    """The entries of an XRANGE-like reply."""
    return [(str(entry_id), dict(fields or {})) for entry_id, fields in reply or []]


def streams_read(reply: Any) -> dict[str, list[Entry]]:
    """The entries of an XREAD reply over several streams, by stream."""
    return {str(stream): stream_entries(entries) for stream, entries in reply or []}


def read_entries(reply: Any) -> list[Entry]:
    """The entries of an XREAD or XREADGROUP reply (over one stream)."""
    return [entry for _, entries in reply or [] for entry in stream_entries(entries)]


def where(url: str) -> str:
    """The Redis server a URL names, without its password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"


def _client(url: str, socket_timeout_s: float) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
        health_check_interval=15,
    )


class RedisLink:
    """``up`` is what the last command or ping found; ``on_change`` hears of each change, and every
    ``on_back`` callback runs each time Redis answers again (to put back what it may have lost)."""

    def __init__(self, url: str, prefix: str, replica: str) -> None:
        self.where = where(url)
        self.redis = _client(url, COMMAND_TIMEOUT_S)
        self.blocking = _client(url, BLOCK_MS / 1000 + COMMAND_TIMEOUT_S)
        self.keys = Keys(prefix)
        self.replica = replica
        self.up = False
        self.on_change: Callable[[], None] = lambda: None
        self.on_back: list[Callable[[], Awaitable[None]]] = []
        self._back = asyncio.Event()
        self._problem = "not connected yet"

    def unavailable(self, what: str) -> RedisUnavailable:
        return RedisUnavailable(f"Redis at {self.where} is unreachable ({self._problem}) while {what}")

    async def call(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation; a lost connection marks Redis down and raises RedisUnavailable."""
        try:
            return await operation()
        except REDIS_DOWN as exc:
            self._down(exc)
            raise self.unavailable(what) from exc

    def _down(self, exc: BaseException) -> None:
        self._problem = excerpt(str(exc) or type(exc).__name__, 200)
        if self.up:
            logger.warning("Redis at %s is unreachable: %s", self.where, self._problem)
            self.up = False
            self._back.clear()
            self.on_change()

    async def wait_up(self) -> None:
        await self._back.wait()

    async def connect(self) -> bool:
        """One look now (start-up): whether Redis answers."""
        await self._ping()
        return self.up

    async def follow(self) -> None:
        """Ping every PING_S; when Redis answers again, run the ``on_back`` callbacks."""
        while True:
            await asyncio.sleep(PING_S)
            await self._ping()

    async def _ping(self) -> None:
        try:
            await self.redis.ping()
        except REDIS_DOWN as exc:
            self._down(exc)
            return
        if self.up:
            return
        logger.info("Redis at %s answers", self.where)
        for callback in self.on_back:
            try:
                await callback()
            except RedisUnavailable:
                return  # gone again: the next ping tries once more
            except Exception:
                logger.exception("putting back the state Redis lost failed")
        self.up = True
        self._back.set()
        self.on_change()

    async def close(self) -> None:
        for client in (self.redis, self.blocking):
            with contextlib.suppress(Exception):
                await client.aclose()
