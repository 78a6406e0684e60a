"""The gRPC server's options, each shown to matter by a real server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from generation_service.server import SERVER_OPTIONS

BUSY_S = 35  # longer than grpc core's default of 30 s for a call the application has not taken yet


async def test_a_call_the_busy_event_loop_takes_late_is_served_not_cancelled() -> None:
    """grpc core cancels a call the application has not taken within 30 s by default (CANCELLED, before
    any handler runs). A service whose event loop is saturated, by a burst of a thousand runs starting,
    takes calls late: they must still be served."""
    server = grpc.aio.server(options=SERVER_OPTIONS)

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {"Echo": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:

        def call() -> bytes:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                echo_call: Any = channel.unary_unary("/test.Echo/Echo")
                return bytes(echo_call(b"ping", timeout=BUSY_S + 30))

        answer = asyncio.get_running_loop().run_in_executor(None, call)
        # The event loop is busy from now on: grpc's own threads receive the call, nobody takes it.
        time.sleep(BUSY_S)
        assert await answer == b"ping"
    finally:
        await server.stop(None)
