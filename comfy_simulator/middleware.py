"""aiohttp middlewares: fault switches and ComfyUI's Origin check (ComfyUI paths only), SwarmUI's
``Authorization`` gate (SwarmUI paths only)."""

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
SWARM_API_PREFIX = "/API/"
ADMIN_PREFIX = "/sim/"  # the simulator's own control routes: neither ComfyUI nor SwarmUI
SERVER_TROUBLE = "500 Internal Server Error\n\nServer got itself in trouble"  # aiohttp's page for a crash


def is_swarm_path(path: str) -> bool:
    return path.startswith((PROXY_PREFIX, SWARM_API_PREFIX))


def is_comfy_path(path: str) -> bool:
    return not is_swarm_path(path) and not path.startswith(ADMIN_PREFIX)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fault_middleware(faults: Faults, is_up: Callable[[], bool]) -> Any:
    """Fault switches; and a stopped ComfyUI (``is_up`` false) answers like ``refuse_connections``: its
    port stays bound, so 503 + ``Connection: close`` stands in for a refused connection."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_comfy_path(request.path):
            return await handler(request)
        if faults.refuse_connections or not is_up():
            return web.Response(status=503, headers={"Connection": "close"})
        if faults.is_500_path(request.path):
            return web.Response(status=500, text=SERVER_TROUBLE, headers={"Connection": "close"})
        return await handler(request)

    return middleware


def origin_middleware() -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_comfy_path(request.path) and "Host" in request.headers and "Origin" in request.headers:
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


def swarm_auth_middleware(required: str) -> Any:
    """SwarmUI's ``Network.RequiredAuthorization`` gate (``WebServer.cs``): the header must equal the
    setting exactly, else 401 ``Unauthorized``. SwarmUI lets ``Network.AuthBypassIPs`` (loopback by
    default) through; the simulator bypasses no one, or a loopback test could never see the gate."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if required and is_swarm_path(request.path) and request.headers.get("Authorization") != required:
            return web.Response(status=401, body=b"Unauthorized")
        return await handler(request)

    return middleware
