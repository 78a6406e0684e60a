"""Prometheus metrics of the gateway, in a registry of its own (several apps can share a test process).

``MetricsMiddleware`` wraps the whole app and watches the ASGI messages it sends, so what it counts is
what went out: the status of ``http.response.start``, and as bytes served only the body bytes the gateway
itself sent (a file handed to the server with ``http.response.pathsend`` counts its size; a HEAD, a 304
and an ``X-Accel-Redirect`` hand-off, whose body nginx sends, count none).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_MEDIA_RE = re.compile(r"^/api/media/([^/]+)/")
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_ENDPOINTS = {"/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics"}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["endpoint", "media_type"]
        self.requests = Counter(
            "media_gateway_requests_total",
            "Answered requests, by endpoint (media, info, page, healthz, readyz, metrics, other), "
            "media type (empty outside media URLs) and status",
            [*labels, "status"],
            registry=self.registry,
        )
        self.bytes_served = Counter(
            "media_gateway_response_body_bytes_total",
            "Body bytes the gateway sent itself (pathsend files included; HEAD, 304 and X-Accel-Redirect: none)",
            labels,
            registry=self.registry,
        )
        self.handoffs = Counter(
            "media_gateway_accel_redirects_total",
            "Responses whose body was handed to the front server with X-Accel-Redirect",
            ["media_type"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "media_gateway_request_duration_seconds",
            "Time from the request to the last body byte handed to the server",
            ["endpoint"],
            buckets=_SECONDS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def endpoint(self, request: Request) -> Response:
        return Response(self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def classify(path: str, media_types: Mapping[str, str]) -> tuple[str, str]:
    """``(endpoint, media_type)`` labels of a request path, bounded whatever the client sends;
    ``media_types`` maps the ``{type}`` URL segments to the media type each one counts as."""
    if path in _ENDPOINTS:
        return _ENDPOINTS[path], ""
    if path.startswith("/runs/"):
        return "page", ""
    found = _MEDIA_RE.match(path)
    if found:
        if found.group(1) == "info":
            return "info", ""
        return "media", media_types.get(found.group(1), "")
    return "other", ""


class MetricsMiddleware:
    """Counts every HTTP response the wrapped app sends (see the module docstring)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, media_types: Mapping[str, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.media_types = media_types

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint, media_type = classify(scope["path"], self.media_types)
        head = scope["method"] == "HEAD"
        state: dict[str, int] = {"status": 0, "bytes": 0, "length": 0}

        async def counting_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                state["status"] = int(message["status"])
                headers = {name.lower(): value for name, value in message.get("headers", ())}
                if b"x-accel-redirect" in headers:
                    self.metrics.handoffs.labels(media_type).inc()
                state["length"] = int(headers.get(b"content-length", b"0") or 0)
            elif kind == "http.response.body" and not head:
                state["bytes"] += len(message.get("body", b""))
            elif kind == "http.response.pathsend":  # the server sends the whole file: its Content-Length
                state["bytes"] += state["length"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            # An exception that escaped before any response: Starlette's outer error handler answers 500.
            status = str(state["status"] or 500)
            self.metrics.requests.labels(endpoint, media_type, status).inc()
            self.metrics.bytes_served.labels(endpoint, media_type).inc(state["bytes"])
            self.metrics.duration.labels(endpoint).observe(time.perf_counter() - started)
