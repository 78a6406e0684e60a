"""aiohttp middlewares of the simulated ComfyUI: fault switches and ComfyUI's Origin check."""

from __future__ import annotations

import ipaddress
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .faults import Faults

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROXY_PREFIX = "/ComfyBackendDirect"
SERVER_TROUBLE = "500 Internal Server Error\n\nServer got itself in trouble"  # aiohttp's page for a crash


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fault_middleware(faults: Faults) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(PROXY_PREFIX):
            return await handler(request)
        if faults.refuse_connections:
            return web.Response(status=503, headers={"Connection": "close"})
        if faults.is_500_path(request.path):
            return web.Response(status=500, text=SERVER_TROUBLE, headers={"Connection": "close"})
        return await handler(request)

    return middleware


def origin_middleware() -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(PROXY_PREFIX) and "Host" in request.headers and "Origin" in request.headers:
            host_domain = request.headers["Host"].lower()
            origin_domain = urllib.parse.urlparse(request.headers["Origin"]).netloc.lower()
            hostname = urllib.parse.urlsplit("//" + host_domain).hostname
            if _is_loopback(hostname) and host_domain != origin_domain:
                log.warning(
                    "request with non matching host and origin %s != %s, returning 403", host_domain, origin_domain
                )
                return web.Response(status=403)
        if request.method == "OPTIONS":
            return web.Response()
        return await handler(request)

    return middleware
