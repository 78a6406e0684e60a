"""gRPC health that tells the truth: SERVING only while a backend answers, run storage takes writes and,
in replica mode, Redis answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from grpc_health.v1 import health, health_pb2

from generation_service.pool import BackendPool
from generation_service.replicas.link import RedisLink
from generation_service.storage_health import StorageHealth

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServiceHealth:
    """Sets every service name's health: SERVING while at least one backend answers and run storage takes
    writes. The pool and the storage call ``changed`` when their state changes."""

    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        names: tuple[str, ...],
        pool: BackendPool,
        storage: StorageHealth,
        redis: RedisLink | None = None,
    ) -> None:
        self.servicer = servicer
        self.redis = redis
        self.names = names
        self.pool = pool
        self.storage = storage
        self._serving: bool | None = None
        self._changed = asyncio.Event()
        storage.on_change = lambda ok: self._changed.set()
        pool.on_health = self._changed.set
        if redis is not None:
            redis.on_change = self._changed.set

    async def apply(self) -> None:
        serving = self.pool.any_up and self.storage.ok and (self.redis is None or self.redis.up)
        if serving is not self._serving:
            logger.log(
                logging.INFO if serving else logging.WARNING, "health: %s", "SERVING" if serving else "NOT_SERVING"
            )
            for name in self.names:
                await self.servicer.set(name, SERVING if serving else NOT_SERVING)
            self._serving = serving

    async def follow(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self.apply()


@contextlib.asynccontextmanager
async def watching_health(service_health: ServiceHealth) -> AsyncIterator[None]:
    """Keep the service's health current until the block ends."""
    await service_health.apply()
    task = asyncio.create_task(service_health.follow(), name="health")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
