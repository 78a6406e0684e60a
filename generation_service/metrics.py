"""Prometheus metrics of the service, in a registry of its own (several services can share a process
in tests), served at /metrics by a small aiohttp app when a metrics address is configured."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Real generations take seconds to many minutes; queue waits can be longer.
_SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "generation_runs_total",
            "Runs that ended, by outcome and template",
            ["outcome", "template"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "generation_queue_wait_seconds",
            "Time from acceptance to execution start",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.execution = Histogram(
            "generation_execution_seconds", "Execution time of completed runs", buckets=_SECONDS, registry=self.registry
        )
        self.streams = Gauge(
            "generation_active_streams", "Open server streams, by RPC", ["rpc"], registry=self.registry
        )
        self.events_sent = Counter(
            "generation_stream_events_sent_total",
            "Events sent on server streams, by RPC",
            ["rpc"],
            registry=self.registry,
        )
        self.events_encoded = Counter(
            "generation_stream_events_encoded_total",
            "Events converted and serialized for sending (once per event, however many streams send it)",
            registry=self.registry,
        )
        self.progress_coalesced = Counter(
            "generation_stream_progress_coalesced_total",
            "node_progress events a stream that fell behind skipped: a newer one for the node replaced them",
            registry=self.registry,
        )
        self.runs_in_flight = Gauge(
            "generation_runs_in_flight", "Runs accepted and not yet ended", registry=self.registry
        )
        self.reconnects = Counter(
            "generation_backend_socket_reconnects_total",
            "Backend websocket connections opened after the first",
            registry=self.registry,
        )
        self.bytes_downloaded = Counter(
            "generation_output_bytes_downloaded_total", "Bytes of outputs stored in run storage", registry=self.registry
        )
        self.damaged_runs = Counter(
            "generation_damaged_run_folders_total",
            "Run folders found damaged (unreadable record, journal or workflow) and left alone",
            registry=self.registry,
        )
        self.backend_up = Gauge(
            "generation_backend_up", "1 while the backend answers its probe", ["backend"], registry=self.registry
        )
        self.backend_queue = Gauge(
            "generation_backend_queue_length",
            "Prompts running or pending on the backend, as last seen",
            ["backend"],
            registry=self.registry,
        )
        self.dispatched = Counter(
            "generation_backend_dispatched_runs_total", "Runs sent to the backend", ["backend"], registry=self.registry
        )
        self.failovers = Counter(
            "generation_backend_failovers_total",
            "Runs taken off the backend after it stopped answering (moved, retried or failed)",
            ["backend"],
            registry=self.registry,
        )

        self.takeovers = Counter(
            "generation_replica_takeovers_total",
            "Replica mode: runs this replica took over from a replica that stopped answering (or stopped)",
            registry=self.registry,
        )
        self.deposed = Counter(
            "generation_replica_runs_lost_total",
            "Replica mode: runs another replica took over from this one while it still followed them",
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "generation_redis_up", "Replica mode: 1 while Redis answers, else 0", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


@contextlib.asynccontextmanager
async def serving_metrics(metrics: Metrics, listen: str) -> AsyncIterator[int]:
    """Serve /metrics on ``listen`` (HOST:PORT, port 0: a free one) until the block ends; yields the port."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    await site.start()
    try:
        yield site.port  # the bound port once started
    finally:
        await runner.cleanup()
