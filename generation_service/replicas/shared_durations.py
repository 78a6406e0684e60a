"""Replica mode: the measured durations that estimates rest on, shared by every replica in one Redis hash
(each replica writing run storage's ``estimates.json`` in turn would keep only the last one's view)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from generation_service.errors import RedisUnavailable
from generation_service.estimates import DurationBook, Profile
from generation_service.replicas.link import RedisLink

logger = logging.getLogger(__name__)

REFRESH_S = 30.0  # how often the other replicas' measurements are read, at least
FRESH_S = 1.0  # a new run reads them again when they are older than this


class SharedDurations(DurationBook):
    def __init__(self, link: RedisLink) -> None:
        super().__init__(None)
        self.link = link
        self._loaded = -FRESH_S

    async def fresh(self) -> None:
        """Before a new run: read the profiles again unless that was done a moment ago."""
        if time.monotonic() - self._loaded >= FRESH_S:
            with contextlib.suppress(RedisUnavailable):
                await self.load()

    async def load(self) -> None:
        """Read every profile in Redis (runs on the followed backends get estimates from the first run)."""
        self._loaded = time.monotonic()
        stored = await self.link.call("reading durations", lambda: self.link.redis.hgetall(self.link.keys.durations))
        for name, text in stored.items():
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                self.remember(str(name), Profile.from_json(json.loads(text)))

    async def measured(self, backend: str, key: str, profile: Profile) -> None:
        """Merge a run's measurement into the profile in Redis (a concurrent merge by another replica of
        the same workflow on the same backend may win: these are estimates)."""
        name = f"{backend} {key}"
        hash_key = self.link.keys.durations
        try:
            text = await self.link.call("reading durations", lambda: self.link.redis.hget(hash_key, name))
            old = self.get(backend, key)
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                old = Profile.from_json(json.loads(text)) if isinstance(text, str) else old
            merged = old.merged(profile) if old is not None else profile
            self.remember(name, merged)
            value = json.dumps(vars(merged), separators=(",", ":"))
            await self.link.call("keeping durations", lambda: self.link.redis.hset(hash_key, name, value))
        except RedisUnavailable as exc:  # an estimate is not worth failing a run for
            await super().measured(backend, key, profile)
            logger.warning("durations kept here only: %s", exc)

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            with contextlib.suppress(RedisUnavailable):
                await self.load()
