"""Run the gateway under uvicorn inside the current event loop (for ``__main__``, tests and the demo)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from media_gateway.app import create_app
from media_gateway.settings import Settings


@dataclass(frozen=True)
class RunningGateway:
    """A gateway listening on a real socket."""

    app: Starlette
    host: str
    port: int  # the bound port (the real one when Settings asked for port 0)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    # log_config=None: logging is configured by the caller (``__main__`` or the test runner), not uvicorn.
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, log_level=settings.log_level, lifespan="off"
    )


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    """Serve ``create_app(settings)`` until the block exits, then shut down gracefully.

    Unlike ``uvicorn.Server.serve`` this installs no signal handlers, so it can live inside a test or a
    larger program. Raises RuntimeError when the runs dir is unusable or the address cannot be bound.
    """
    app = create_app(settings)
    config = uvicorn_config(app, settings)
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup()
    except SystemExit as exc:  # uvicorn exits the process when it cannot bind; here that is an error
        raise RuntimeError(f"media gateway could not listen on {settings.listen}") from exc
    sockets = server.servers[0].sockets
    gateway = RunningGateway(app, settings.host, sockets[0].getsockname()[1])
    ticker = asyncio.create_task(server.main_loop(), name="media-gateway-ticks")  # keeps the Date header fresh
    try:
        yield gateway
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        server.should_exit = True
        await server.shutdown()
