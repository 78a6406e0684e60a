"""gRPC health that tells the truth: SERVING only while the backend answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from grpc_health.v1 import health, health_pb2

from generation_service.comfy import ComfyBackend
from generation_service.metrics import Metrics

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextlib.asynccontextmanager
async def watching_backend(
    servicer: health.aio.HealthServicer,
    names: tuple[str, ...],
    backend: ComfyBackend,
    metrics: Metrics,
    interval_s: float,
) -> AsyncIterator[None]:
    """Probe the backend every ``interval_s`` and set every service name's health from the answer."""

    async def probe_forever() -> None:
        state = None
        while True:
            up = await backend.probe()
            metrics.backend_up.set(1 if up else 0)
            if up is not state:
                logger.log(
                    logging.INFO if up else logging.WARNING,
                    "backend %s is %s",
                    backend.public_url,
                    "answering" if up else "not answering",
                )
                for name in names:
                    await servicer.set(name, SERVING if up else NOT_SERVING)
                state = up
            await asyncio.sleep(interval_s)

    task = asyncio.create_task(probe_forever(), name="backend-health")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
