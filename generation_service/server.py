"""Building and running the gRPC server: the servicer plus health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health, health_pb2_grpc

from comfy_generation.runstore import RunOptions, RunStore
from generation_service.auth import BearerTokenInterceptor
from generation_service.errors import GenerationError
from generation_service.estimates import DurationBook
from generation_service.follower import FollowPolicy
from generation_service.health import ServiceHealth, watching_health
from generation_service.metrics import Metrics, serving_metrics
from generation_service.pool import BackendConfig, BackendPool, configs_from_file, configs_from_urls
from generation_service.reflection import enable_reflection
from generation_service.replicas.link import RedisLink
from generation_service.replicas.runner import ReplicaRunner
from generation_service.replicas.shared_durations import SharedDurations
from generation_service.runner import Runner
from generation_service.servicer import SERVICE_NAME, GenerationServicer, add_to_server
from generation_service.settings import Settings
from generation_service.storage_health import StorageHealth
from generation_service.swarm_discovery import SwarmCredentials, SwarmDiscovery
from generation_service.templating import TemplateCatalog, TemplateLoadError

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# A burst of calls (clients reconnecting after a restart) must queue, not be dropped: gRPC's default
# pending-call limits (1000 soft / 3000 hard) cancel such bursts (see the streaming benchmark).
SERVER_OPTIONS = [
    ("grpc.server.max_pending_requests", 20000),
    ("grpc.server.max_pending_requests_hard_limit", 60000),
    ("grpc.keepalive_time_ms", 30000),  # find dead clients of long streams
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10000),
    ("grpc.keepalive_permit_without_calls", 1),
    # grpc core cancels a call the application has not taken within 30 s (CANCELLED, before any handler
    # runs); an event loop saturated by a burst of runs starting takes calls late. A caller bounds its
    # wait with its own deadline; the server gives up on a call only after this long.
    ("grpc.server_max_unrequested_time_in_server", 600),
]


async def create_server(
    settings: Settings, runner: Runner, metrics: Metrics
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """The server with every service registered, bound but not started."""
    interceptors = [BearerTokenInterceptor(settings.tokens)] if settings.tokens else []
    # Template requests may carry input media: room for the largest file plus the rest of the request.
    largest = max(MAX_MESSAGE_BYTES, settings.max_input_media_bytes + 1024 * 1024)
    options = [*SERVER_OPTIONS, ("grpc.max_receive_message_length", largest)]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    add_to_server(GenerationServicer(runner, metrics), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
    try:
        port = (
            server.add_secure_port(settings.listen, _tls(settings))
            if settings.tls_cert_file
            else server.add_insecure_port(settings.listen)
        )
    except RuntimeError as exc:
        raise RuntimeError(f"cannot bind the gRPC server to {settings.listen}: {exc}") from exc
    return server, port, health_servicer


def _tls(settings: Settings) -> grpc.ServerCredentials:
    key, chain = Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes()
    ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=ca is not None)


@dataclass(frozen=True)
class RunningService:
    port: int
    runner: Runner
    server: grpc.aio.Server
    metrics: Metrics
    metrics_port: int | None


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[RunningService]:
    """The whole service in the current event loop: backend client, runner, health probe, metrics
    endpoint and the started gRPC server."""
    check_runs_dir(settings)
    templates = load_templates(settings)
    metrics = Metrics()
    credentials = SwarmCredentials(settings.swarm_authorization or None, settings.swarm_token or None)
    pool = BackendPool(
        [] if settings.swarm_url else backend_configs(settings),
        metrics,
        headers=credentials.headers() if settings.swarm_url else None,
        request_timeout_s=settings.request_timeout_seconds,
        retries=settings.backend_retries,
        probe_s=settings.health_check_seconds,
        down_after_s=settings.backend_down_seconds,
    )
    link = RedisLink(settings.redis_url, settings.redis_prefix, replica_name(settings)) if settings.redis_url else None
    policy = FollowPolicy(
        media_base_url=settings.media_base_url,
        poll_s=settings.history_poll_seconds,
        keepalive_s=settings.keepalive_seconds,
        cancel_confirm_s=settings.cancel_confirm_seconds,
        lost_grace_s=settings.lost_prompt_grace_seconds,
        signing_secret=settings.media_signing_secret,
        url_ttl_s=settings.media_url_ttl_seconds,
        file_urls=settings.media_urls == "files",
        durations=SharedDurations(link) if link is not None else DurationBook(Path(settings.runs_dir)),
    )
    defaults = RunOptions(
        queue_timeout_s=settings.queue_timeout_seconds, execution_timeout_s=settings.execution_timeout_seconds
    )
    storage = StorageHealth(settings.runs_dir)
    common: dict[str, Any] = {
        "storage": storage,
        "defaults": defaults,
        "max_in_flight": settings.max_runs_in_flight,
        "metrics": metrics,
        "templates": templates,
        "max_media_bytes": settings.max_input_media_bytes,
    }
    runner = (
        ReplicaRunner(
            RunStore(settings.runs_dir),
            pool,
            policy,
            link=link,
            takeover_s=settings.takeover_seconds,
            retention_s=settings.redis_retention_seconds,
            **common,
        )
        if link is not None
        else Runner(RunStore(settings.runs_dir), pool, policy, **common)
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(policy.durations.close)  # after the runner closed: its runs measured last
        if link is not None:
            await stack.enter_async_context(following_redis(link))
        await pool.start()
        stack.push_async_callback(pool.close)
        if settings.swarm_url:
            await stack.enter_async_context(following_swarm(pool, settings, credentials))
        await stack.enter_async_context(storage.probing())
        resumed = await runner.recover()
        stack.push_async_callback(runner.close)
        if resumed:
            logger.info("resumed %d unfinished run(s) from run storage", resumed)
        metrics_port = None
        if settings.metrics_listen:
            metrics_port = await stack.enter_async_context(serving_metrics(metrics, settings.metrics_listen))
        server, port, health_servicer = await create_server(settings, runner, metrics)
        service_health = ServiceHealth(health_servicer, ("", SERVICE_NAME), pool, storage, link)
        await stack.enter_async_context(watching_health(service_health))
        await server.start()
        try:
            yield RunningService(port, runner, server, metrics, metrics_port)
        finally:
            await health_servicer.enter_graceful_shutdown()  # probes see NOT_SERVING while calls drain
            await server.stop(settings.shutdown_grace_seconds)


def replica_name(settings: Settings) -> str:
    """A name no other replica has: each start of a replica is a new consumer of the owners group, and
    the runs of its previous life are taken over like any stopped replica's."""
    return settings.replica_name or f"{socket.gethostname()}-{secrets.token_hex(3)}"


@contextlib.asynccontextmanager
async def following_redis(link: RedisLink) -> AsyncIterator[None]:
    """Connect to Redis (start-up goes on while it does not answer) and keep watching it."""
    if await link.connect():
        logger.info("replica %s sharing state on Redis at %s", link.replica, link.where)
    else:
        logger.error("Redis at %s does not answer; serving as NOT_SERVING until it does", link.where)
    task = asyncio.create_task(link.follow(), name="redis")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await link.close()


@contextlib.asynccontextmanager
async def following_swarm(pool: BackendPool, settings: Settings, credentials: SwarmCredentials) -> AsyncIterator[None]:
    """Discover SwarmUI's ComfyUI backends now (so that runs can be resumed on them) and follow them."""
    async with aiohttp.ClientSession() as http:
        discovery = SwarmDiscovery(http, settings.swarm_url, credentials, settings.swarm_refresh_seconds)
        try:
            await pool.apply_swarm(await discovery.refresh(), discovery.proxy_url)
        except GenerationError as exc:  # logged; follow() tries again every refresh interval
            logger.error("SwarmUI at %s did not list its backends: %s", discovery.proxy_url, exc)
        task = asyncio.create_task(pool.follow_swarm(discovery), name="swarm-discovery")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def backend_configs(settings: Settings) -> list[BackendConfig]:
    """The pool's backends: from the backends file when one is set, else from backend_url."""
    try:
        if settings.backends_file:
            return configs_from_file(Path(settings.backends_file))
        return configs_from_urls(settings.backend_url, settings.swarm_backend_id)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from exc


def load_templates(settings: Settings) -> TemplateCatalog | None:
    """Every template, checked now: a broken one stops start-up with the file and the problem."""
    if not settings.templates_dir:
        return None
    try:
        catalog = TemplateCatalog.load(Path(settings.templates_dir))
    except TemplateLoadError as exc:
        raise RuntimeError(f"templates_dir {settings.templates_dir}: {exc}") from exc
    logger.info("%d template(s) from %s", len(catalog.templates()), settings.templates_dir)
    return catalog


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
            "generation service listening on %s:%d%s, backends %s, runs in %s%s",
            host,
            service.port,
            " (TLS)" if settings.tls_cert_file else "",
            ", ".join(service.runner.pool.members),
            settings.runs_dir,
            f", metrics on port {service.metrics_port}" if service.metrics_port else "",
        )
        await stop.wait()
        in_flight = len(service.runner.runs)
        logger.info("shutting down; %d run(s) in flight get %.0f s", in_flight, settings.shutdown_grace_seconds)
