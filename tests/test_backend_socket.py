"""The backend client's websocket against a real (small) aiohttp server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from generation_service.comfy_backend import ComfyBackend


class DroppingServer:
    """Accepts every websocket upgrade and closes the socket at once (a proxy that drops it)."""

    def __init__(self) -> None:
        self.attempts = 0
        self._changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        self.attempts += 1
        self._changed.set()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    async def until_attempts(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.attempts < count:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def dropping_server() -> AsyncIterator[tuple[DroppingServer, str]]:
    server = DroppingServer()
    app = web.Application()
    app.router.add_get("/ws", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield server, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_a_socket_dropped_right_after_opening_backs_off_instead_of_reconnecting_in_a_loop(
    dropping_server: tuple[DroppingServer, str],
) -> None:
    server, url = dropping_server
    backend = ComfyBackend(url)
    reconnects = 0

    def reconnected() -> None:
        nonlocal reconnects
        reconnects += 1

    backend.on_reconnect = reconnected
    await backend.start()
    try:
        # Backing off from 0.1 s and doubling, attempts come at 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s: five in
        # the first 3 s. Retrying every 0.1 s would make thirty.
        with pytest.raises(TimeoutError):
            await server.until_attempts(9, timeout=3.0)
    finally:
        await backend.close()
    assert 4 <= server.attempts <= 8
    assert backend.connections == server.attempts  # each attempt was a connection that opened
    assert reconnects == backend.connections - 1
    assert not backend.connected
