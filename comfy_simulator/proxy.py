"""SwarmUI's ``/ComfyBackendDirect/<path>`` proxy (``ComfyUIRedirectHelper.ComfyBackendDirectHandler``),
single-backend mode (no ``comfy_domulti`` cookie), in front of SwarmUI's running ComfyUI backends.

Each request goes to one backend: the first running one, or the one ``X-Swarm-Backend-ID`` names (the
websocket upgrade included); a prompt whose ``client_id`` has a proxied websocket goes to that socket's
backend instead (``ComfyUser.SendPromptRegular``). Like SwarmUI it copies no request header but
Content-Type (so Origin, Range, If-Range are gone), and sends back only the status, Content-Type and the
(fully buffered) body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any

import aiohttp
from aiohttp import web

from .settings import SimulatorSettings
from .swarm_backends import SwarmBackend, SwarmBackends

log = logging.getLogger(__name__)
_STYLE = "<style>body{background-color:#101010;color:#eeeeee;}</style>"


def _html(message: str, head: str) -> str:
    body = f'<body>\n<span class="comfy-failed-to-load">{message}</span>\n</body>'
    return f"<!DOCTYPE html>\n<html>\n{head}\n{body}\n</html>"


NO_BACKEND = _html("No ComfyUI backend available, loading failed.", f"<head>\n{_STYLE}\n</head>")
PERMISSION_DENIED = _html("Permission denied.", f"<head>\n{_STYLE}\n</head>")
GENERATE_DENIED = _html("Permission denied.", f"<head>{_STYLE}</head>")  # the POST check's own page
INT = re.compile(r"\s*[+-]?[0-9]+\s*")  # what int.TryParse accepts


def _page(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html")


class SwarmProxy:
    def __init__(self, settings: SimulatorSettings, backends: SwarmBackends) -> None:
        self.settings = settings
        self.backends = backends
        self.session: aiohttp.ClientSession | None = None
        # clientId → (upstream socket, its backend), registered when the upstream ``status`` frame with
        # ``sid`` passes; one map for all backends, like ComfyUIRedirectHelper.Users.
        self.users: dict[str, tuple[aiohttp.ClientWebSocketResponse, SwarmBackend]] = {}
        self.client_sockets: set[web.WebSocketResponse] = set()

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(auto_decompress=False)

    async def stop(self) -> None:
        for ws in list(self.client_sockets):
            await ws.close()
        if self.session is not None:
            await self.session.close()

    def _select(self, request: web.Request) -> SwarmBackend | None:
        """The running backends, narrowed to the header's id when it parses as an int (SwarmUI ignores one
        that does not), then the first."""
        candidates = self.backends.running()
        wanted = request.headers.get("X-Swarm-Backend-ID")
        if wanted is not None and INT.fullmatch(wanted):
            candidates = [b for b in candidates if b.id == int(wanted)]
        return candidates[0] if candidates else None

    def _check_post(self, tail: str, body: bytes) -> web.Response | tuple[bytes, SwarmBackend | None]:
        """SwarmUI parses the body of POST prompt / interrupt itself; returns an answer, or the body to
        forward and the backend of the prompt's proxied websocket (if any)."""
        try:
            parsed = json.loads(body)
            if not isinstance(parsed, dict):
                raise ValueError("not an object")
        except ValueError:
            return web.Response(status=500)  # JObject.Parse throws inside Swarm
        if tail.endswith("interrupt") and not parsed.get("prompt_id") and self.users:
            return web.Response(status=500)  # PromptIdMap.TryGetValue(null) throws
        user_backend = None
        if tail.endswith("prompt") and parsed.get("client_id") in self.users:
            upstream_ws, user_backend = self.users[parsed["client_id"]]
            if upstream_ws.closed:
                error = "[SwarmUI] No functional comfy backend available to run this request."
                return web.json_response({"error": error}, status=400)
        return json.dumps(parsed).encode(), user_backend

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.settings.swarm_allows("comfy_direct_calls"):
            return _page(401, PERMISSION_DENIED)
        backend = self._select(request)
        if backend is None:
            return _page(400, NO_BACKEND)
        tail = request.match_info["tail"]
        query = request.query_string
        path = tail + (f"?{query}" if query else "")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, backend, path)
        if request.method == "POST" and not self.settings.swarm_allows("comfy_backend_generate"):
            return _page(401, GENERATE_DENIED)
        body = await request.read()
        headers = (
            {"Content-Type": request.headers["Content-Type"]} if body and "Content-Type" in request.headers else {}
        )
        if request.method == "POST" and tail in ("prompt", "api/prompt", "interrupt", "api/interrupt"):
            checked = self._check_post(tail, body)
            if isinstance(checked, web.Response):
                return checked
            (body, user_backend), headers = checked, {"Content-Type": "application/json"}
            if tail.endswith("prompt"):
                backend = user_backend or backend
                backend.touch()
        target = f"{backend.comfy.url}/{path}"
        assert self.session is not None
        try:
            async with self.session.request(request.method, target, data=body or None, headers=headers) as resp:
                data = await resp.read()
                out_headers = {"Content-Type": resp.headers["Content-Type"]} if "Content-Type" in resp.headers else {}
                return web.Response(status=resp.status, body=data, headers=out_headers)
        except aiohttp.ClientError as exc:
            log.warning("upstream request failed: %s", exc)
            return web.Response(status=500)

    async def _downstream(
        self,
        upstream: aiohttp.ClientWebSocketResponse,
        backend: SwarmBackend,
        client: web.WebSocketResponse,
        sids: list[str],
    ) -> None:
        async for msg in upstream:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self._note_sid(msg.data, upstream, backend, sids)
                await client.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await client.send_bytes(msg.data)
        # the last upstream socket closed: Swarm closes the client with InternalServerError
        await client.close(code=aiohttp.WSCloseCode.INTERNAL_ERROR, message=b"backend socket closed")

    async def _websocket(self, request: web.Request, backend: SwarmBackend, path: str) -> web.StreamResponse:
        assert self.session is not None
        try:
            upstream = await self.session.ws_connect(f"{backend.comfy.url}/{path}".replace("http://", "ws://", 1))
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("upstream websocket failed: %s", exc)
            return _page(400, NO_BACKEND)
        client = web.WebSocketResponse()
        await client.prepare(request)
        self.client_sockets.add(client)
        sids: list[str] = []
        pump = asyncio.create_task(self._downstream(upstream, backend, client, sids))
        try:
            async for msg in client:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await upstream.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await upstream.send_bytes(msg.data)
        finally:
            await upstream.close()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pump
            for sid in sids:
                if sid in self.users and self.users[sid][0] is upstream:
                    del self.users[sid]
            self.client_sockets.discard(client)
        return client

    def _note_sid(
        self, text: str, upstream: aiohttp.ClientWebSocketResponse, backend: SwarmBackend, sids: list[str]
    ) -> None:
        if not text.startswith("{") or len(text) >= 80 * 1024:
            return
        try:
            data: Any = json.loads(text).get("data")
        except ValueError:
            return
        if isinstance(data, dict) and isinstance(data.get("sid"), str):
            self.users[data["sid"]] = (upstream, backend)
            sids.append(data["sid"])
