"""Building and running the gRPC server: the servicer plus health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from generation_service.comfy import ComfyBackend
from generation_service.follower import FollowPolicy
from generation_service.run_record import RunOptions
from generation_service.runner import Runner
from generation_service.servicer import GenerationServicer
from generation_service.settings import Settings
from generation_service.v1 import generation_pb2 as pb
from generation_service.v1 import generation_pb2_grpc as pb_grpc
from runstore import RunStore

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name


async def create_server(settings: Settings, runner: Runner) -> tuple[grpc.aio.Server, int]:
    """The server with every service registered, bound but not started; returns it and its port."""
    server = grpc.aio.server()
    pb_grpc.add_GenerationServiceServicer_to_server(GenerationServicer(runner), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise RuntimeError(f"cannot bind the gRPC server to {settings.listen}")
    return server, port


@dataclass(frozen=True)
class RunningService:
    port: int
    runner: Runner
    server: grpc.aio.Server


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[RunningService]:
    """The whole service in the current event loop: backend client, runner and started gRPC server."""
    check_runs_dir(settings)
    backend = ComfyBackend(
        settings.backend_url,
        backend_id=settings.swarm_backend_id,
        request_timeout_s=settings.request_timeout_seconds,
        retries=settings.backend_retries,
    )
    await backend.start()
    policy = FollowPolicy(
        media_base_url=settings.media_base_url,
        poll_s=settings.history_poll_seconds,
        keepalive_s=settings.keepalive_seconds,
        cancel_confirm_s=settings.cancel_confirm_seconds,
    )
    defaults = RunOptions(
        queue_timeout_s=settings.queue_timeout_seconds, execution_timeout_s=settings.execution_timeout_seconds
    )
    runner = Runner(
        RunStore(settings.runs_dir), backend, policy, defaults=defaults, max_in_flight=settings.max_runs_in_flight
    )
    try:
        resumed = await runner.recover()
    except BaseException:
        await backend.close()
        raise
    if resumed:
        logger.info("resumed %d unfinished run(s) from run storage", resumed)
    server, port = await create_server(settings, runner)
    await server.start()
    try:
        yield RunningService(port, runner, server)
    finally:
        await server.stop(settings.shutdown_grace_seconds)
        await runner.close()
        await backend.close()


def check_runs_dir(settings: Settings) -> None:
    """Fail at start-up, not per request, when run storage cannot be written."""
    root = settings.runs_dir
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RuntimeError(f"runs dir {root} is not a writable directory: {exc}") from exc


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_service(settings) as service:
        host = settings.listen.rpartition(":")[0]
        logger.info(
            "generation service listening on %s:%d, backend %s, runs in %s",
            host,
            service.port,
            service.runner.backend.public_url,
            settings.runs_dir,
        )
        await stop.wait()
        in_flight = len(service.runner.runs)
        logger.info("shutting down; %d run(s) in flight get %.0f s", in_flight, settings.shutdown_grace_seconds)
