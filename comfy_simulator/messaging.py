"""Websocket registry, the ordered message publisher and the ``/ws`` handler (ComfyUI's ``PromptServer``)."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from .faults import Faults

log = logging.getLogger(__name__)


class _SocketFaultState:
    def __init__(self) -> None:
        self.epoch = -1
        self.sent = 0


# ComfyUI's BinaryEventTypes: a preview image with only its format (1), or with a metadata JSON (4) for
# clients that sent feature_flags with supports_preview_metadata first.
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_IMAGE_TYPES = {"JPEG": (1, "image/jpeg"), "PNG": (2, "image/png")}


@dataclass(frozen=True)
class Preview:
    """One preview image for the running prompt's client: the binary frame is built when it is sent,
    from the socket's feature flags."""

    image_format: str  # "JPEG" or "PNG", as comfy's progress hook passes it
    image: bytes
    node_id: str
    prompt_id: str

    def frame(self, with_metadata: bool) -> bytes:
        image_type, mime = _IMAGE_TYPES[self.image_format]
        if not with_metadata:
            return struct.pack(">II", PREVIEW_IMAGE, image_type) + self.image
        metadata = {
            "node_id": self.node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": self.node_id,
            "parent_node_id": None,
            "real_node_id": self.node_id,
            "image_type": mime,
        }
        encoded = json.dumps(metadata).encode()
        return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(encoded)) + encoded + self.image


class Messenger:
    """Queues ``(event, data, sid)`` and sends them in order: to ``sockets[sid]`` only (dropped silently when
    that sid has no socket), or to every socket when ``sid`` is None. A ``Preview`` (event ``None``) goes
    as a binary frame, only ever to one sid."""

    def __init__(
        self, faults: Faults, server_features: dict[str, Any], queue_info: Callable[[], dict[str, Any]]
    ) -> None:
        self.faults = faults
        self.server_features = server_features
        self.queue_info = queue_info
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.sockets_metadata: dict[str, dict[str, Any]] = {}
        self.client_id: str | None = None  # the running prompt's client_id
        self.last_node_id: str | None = None
        self._queue: asyncio.Queue[tuple[str | None, Any, str | None]] = asyncio.Queue()
        self._fault_state: dict[int, _SocketFaultState] = {}
        self._task: asyncio.Task[None] | None = None
        self.all_ws: set[web.WebSocketResponse] = set()
        self.sent_hook: Callable[[dict[str, Any]], None] | None = None  # SimulatorSettings.frame_sent_hook

    def start(self) -> None:
        self._task = asyncio.create_task(self._publish_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for ws in list(self.all_ws):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"Server shutdown")

    def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        self._queue.put_nowait((event, data, sid))

    def send_preview(self, preview: Preview, sid: str | None) -> None:
        if sid is not None:
            self._queue.put_nowait((None, preview, sid))

    def wants_metadata(self, sid: str | None) -> bool:
        """Whether the socket of ``sid`` asked for type-4 previews (feature_flags, first message)."""
        flags = self.sockets_metadata.get(sid or "", {}).get("feature_flags", {})
        supported = self.server_features.get("supports_preview_metadata")
        return bool(supported and isinstance(flags, dict) and flags.get("supports_preview_metadata"))

    def queue_updated(self) -> None:
        self.send("status", {"status": self.queue_info()})

    async def _publish_loop(self) -> None:
        while True:
            event, data, sid = await self._queue.get()
            if event is None:
                await self._send_binary(data, sid)
            else:
                await self.send_now(event, data, sid)

    async def _send_binary(self, preview: Preview, sid: str | None) -> None:
        ws = self.sockets.get(sid or "")
        if ws is None:
            return
        try:
            await ws.send_bytes(preview.frame(self.wants_metadata(sid)))
        except (ConnectionError, RuntimeError) as exc:
            log.debug("send to a closing socket failed: %s", exc)

    async def send_now(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        message = {"type": event, "data": data}
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            return
        for ws in targets:
            await self._send_one(ws, message)

    async def _send_one(self, ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
        limit = self.faults.drop_socket_after_frames
        state = self._fault_state.setdefault(id(ws), _SocketFaultState())
        if limit is not None:
            if state.epoch != self.faults.drop_epoch:
                state.epoch, state.sent = self.faults.drop_epoch, 0
            if state.sent >= limit:
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"fault: drop_socket_after_frames")
                return
        try:
            await ws.send_str(json.dumps(message))
        except (ConnectionError, RuntimeError) as exc:
            log.debug("send to a closing socket failed: %s", exc)
            return
        state.sent += 1
        if self.sent_hook is not None:
            self.sent_hook(message)
        if limit is not None and state.sent >= limit:
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"fault: drop_socket_after_frames")

    async def websocket_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.all_ws.add(ws)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)  # reusing a session: the old socket is replaced ...
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.sockets_metadata[sid] = {"feature_flags": {}}
        try:
            await self.send_now("status", {"status": self.queue_info(), "sid": sid}, sid)
            if self.client_id == sid and self.last_node_id is not None:
                await self.send_now("executing", {"node": self.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    log.warning("ws connection closed with exception %s", ws.exception())
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                        if first_message and isinstance(data, dict) and data.get("type") == "feature_flags":
                            if sid in self.sockets_metadata:
                                self.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                            await self.send_now("feature_flags", dict(self.server_features), sid)
                        first_message = False
                    except json.JSONDecodeError:
                        log.warning("Invalid JSON received from client %s: %s", sid, msg.data)
        finally:
            # ... and when the OLD handler ends it pops sockets[sid], orphaning the new socket (ComfyUI's bug).
            self.sockets.pop(sid, None)
            self.sockets_metadata.pop(sid, None)
            self.all_ws.discard(ws)
            self._fault_state.pop(id(ws), None)
        return ws
