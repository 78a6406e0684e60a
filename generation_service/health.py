"""gRPC health that tells the truth: SERVING only while the backend answers and run storage takes writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from grpc_health.v1 import health, health_pb2

from generation_service.backend import Backend
from generation_service.metrics import Metrics
from generation_service.storage_health import StorageHealth

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServiceHealth:
    """Sets every service name's health from the backend's probe and the storage's state."""

    def __init__(self, servicer: health.aio.HealthServicer, names: tuple[str, ...], storage: StorageHealth) -> None:
        self.servicer = servicer
        self.names = names
        self.storage = storage
        self.backend_up: bool | None = None  # unknown until the first probe
        self._serving: bool | None = None
        self._update = asyncio.Event()
        storage.on_change = lambda ok: self._update.set()

    async def apply(self) -> None:
        serving = bool(self.backend_up) and self.storage.ok
        if serving is not self._serving:
            for name in self.names:
                await self.servicer.set(name, SERVING if serving else NOT_SERVING)
            self._serving = serving

    async def follow_storage(self) -> None:
        while True:
            await self._update.wait()
            self._update.clear()
            await self.apply()


@contextlib.asynccontextmanager
async def watching_backend(
    service_health: ServiceHealth, backend: Backend, metrics: Metrics, interval_s: float
) -> AsyncIterator[None]:
    """Probe the backend every ``interval_s`` and keep the service's health current."""

    async def probe_forever() -> None:
        while True:
            up = await backend.probe()
            metrics.backend_up.set(1 if up else 0)
            if up is not service_health.backend_up:
                logger.log(
                    logging.INFO if up else logging.WARNING,
                    "backend %s is %s",
                    backend.public_url,
                    "answering" if up else "not answering",
                )
                service_health.backend_up = up
                await service_health.apply()
            await asyncio.sleep(interval_s)

    tasks = [
        asyncio.create_task(probe_forever(), name="backend-health"),
        asyncio.create_task(service_health.follow_storage(), name="storage-health"),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
