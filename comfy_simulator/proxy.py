"""SwarmUI's ``/ComfyBackendDirect/<path>`` proxy (``ComfyUIRedirectHelper.ComfyBackendDirectHandler``),
single-backend mode, in front of the simulated ComfyUI of the same server.

Like SwarmUI it copies no request header but Content-Type (so Origin, Range, If-Range are gone), and sends back
only the status, Content-Type and the (fully buffered) body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp
from aiohttp import web

from .settings import SimulatorSettings

log = logging.getLogger(__name__)
NO_BACKEND = "No ComfyUI backend available, loading failed."


class SwarmProxy:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.upstream = ""  # set once the server has its port
        self.session: aiohttp.ClientSession | None = None
        # clientId → upstream socket, registered when the upstream ``status`` frame with ``sid`` passes.
        self.users: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self.client_sockets: set[web.WebSocketResponse] = set()

    async def start(self, upstream: str) -> None:
        self.upstream = upstream
        self.session = aiohttp.ClientSession(auto_decompress=False)

    async def stop(self) -> None:
        for ws in list(self.client_sockets):
            await ws.close()
        if self.session is not None:
            await self.session.close()

    def _backend_ok(self, request: web.Request) -> bool:
        if not self.settings.backend_ids:
            return False
        wanted = request.headers.get("X-Swarm-Backend-ID")
        if wanted is None:
            return True
        try:
            return int(wanted.strip()) in self.settings.backend_ids
        except ValueError:
            return False

    def _check_post(self, tail: str, body: bytes) -> web.Response | bytes:
        """SwarmUI parses the body of POST prompt / interrupt itself; returns the body to forward or an answer."""
        try:
            parsed = json.loads(body)
            if not isinstance(parsed, dict):
                raise ValueError("not an object")
        except ValueError:
            return web.Response(status=500)  # JObject.Parse throws inside Swarm
        if tail.endswith("interrupt") and not parsed.get("prompt_id") and self.users:
            return web.Response(status=500)  # PromptIdMap.TryGetValue(null) throws
        if tail.endswith("prompt") and parsed.get("client_id") in self.users:
            upstream_ws = self.users[parsed["client_id"]]
            if upstream_ws.closed:
                error = "[SwarmUI] No functional comfy backend available to run this request."
                return web.json_response({"error": error}, status=400)
        return json.dumps(parsed).encode()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._backend_ok(request):
            return web.Response(status=400, text=NO_BACKEND, content_type="text/html")
        tail = request.match_info["tail"]
        query = request.query_string
        target = f"{self.upstream}/{tail}" + (f"?{query}" if query else "")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, target)
        body = await request.read()
        headers = (
            {"Content-Type": request.headers["Content-Type"]} if body and "Content-Type" in request.headers else {}
        )
        if request.method == "POST" and tail in ("prompt", "api/prompt", "interrupt", "api/interrupt"):
            checked = self._check_post(tail, body)
            if isinstance(checked, web.Response):
                return checked
            body, headers = checked, {"Content-Type": "application/json"}
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
        self, upstream: aiohttp.ClientWebSocketResponse, client: web.WebSocketResponse, sids: list[str]
    ) -> None:
        async for msg in upstream:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self._note_sid(msg.data, upstream, sids)
                await client.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await client.send_bytes(msg.data)
        # the last upstream socket closed: Swarm closes the client with InternalServerError
        await client.close(code=aiohttp.WSCloseCode.INTERNAL_ERROR, message=b"backend socket closed")

    async def _websocket(self, request: web.Request, target: str) -> web.StreamResponse:
        assert self.session is not None
        try:
            upstream = await self.session.ws_connect(target.replace("http://", "ws://", 1))
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("upstream websocket failed: %s", exc)
            return web.Response(status=400, text=NO_BACKEND, content_type="text/html")
        client = web.WebSocketResponse()
        await client.prepare(request)
        self.client_sockets.add(client)
        sids: list[str] = []
        pump = asyncio.create_task(self._downstream(upstream, client, sids))
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
                if self.users.get(sid) is upstream:
                    del self.users[sid]
            self.client_sockets.discard(client)
        return client

    def _note_sid(self, text: str, upstream: aiohttp.ClientWebSocketResponse, sids: list[str]) -> None:
        if not text.startswith("{") or len(text) >= 80 * 1024:
            return
        try:
            data: Any = json.loads(text).get("data")
        except ValueError:
            return
        if isinstance(data, dict) and isinstance(data.get("sid"), str):
            self.users[data["sid"]] = upstream
            sids.append(data["sid"])
