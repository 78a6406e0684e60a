"""Debian's headless Chromium driven over the DevTools protocol (the `devtools` fixture is in conftest.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # without these Chromium dials out and the closed network refuses it
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-port=0",
]


# One run with all three kinds: a 160x120 orange image, 2 s of MP3, a 2 s H.264/AAC MP4 of orange frames.
class DevTools:
    """A minimal Chrome DevTools Protocol client over one browser websocket (flattened sessions)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.event_arrived = asyncio.Condition()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self.pending.pop(data["id"])
                if "error" in data:
                    future.set_exception(RuntimeError(f"DevTools error: {data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
            else:
                async with self.event_arrived:
                    self.events.append(data)
                    self.event_arrived.notify_all()

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        return await future

    async def wait_event(self, method: str, session: str, after: int) -> dict[str, Any]:
        """The first ``method`` event of ``session`` among events numbered ``after`` and later."""
        async with self.event_arrived:
            while True:
                for event in self.events[after:]:
                    if event.get("method") == method and event.get("sessionId") == session:
                        return event
                await self.event_arrived.wait()

    async def open_page(self, url: str) -> str:
        """A new tab with Network and Page events on, navigated to ``url`` and loaded; returns its session."""
        target = await self.call("Target.createTarget", url="about:blank")
        session = (await self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True))["sessionId"]
        await self.call("Network.enable", session)
        await self.call("Page.enable", session)
        mark = len(self.events)
        await self.call("Page.navigate", session, url=url)
        await self.wait_event("Page.loadEventFired", session, mark)
        return str(session)

    async def evaluate(self, session: str, expression: str) -> Any:
        reply = await self.call(
            "Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"page script failed: {reply['exceptionDetails']}")
        return reply["result"]["value"]

    def responses(self, session: str) -> list[dict[str, Any]]:
        return [
            e["params"]["response"]
            for e in self.events
            if e.get("method") == "Network.responseReceived" and e.get("sessionId") == session
        ]
