"""Run the gateway inside the current event loop, under uvicorn or granian (for ``__main__``, tests and the demo).

Granian is the production default: it answers small files about 1.5-2 times as fast as uvicorn (README,
"Media gateway performance", has the figures). Both servers run in this process, on a socket bound
before the server starts, so port 0 works and the real port is known as soon as the context is entered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from granian._granian import ListenerSpec
from granian.constants import Interfaces
from granian.log import LogLevels
from granian.server.embed import Server as EmbeddedGranian
from granian.server.mp import MPServer
from starlette.applications import Starlette

from comfy_generation import logformat
from media_gateway.app import create_app
from media_gateway.settings import Settings

logger = logging.getLogger(__name__)


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
    """Serve ``create_app(settings)`` under uvicorn until the block exits, then shut down gracefully.

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


class _Granian(EmbeddedGranian):
    """Granian's embedded server with its listening socket built up front, in this process.

    Granian normally lets each worker bind its own SO_REUSEPORT socket, which hides the port chosen for
    port 0 and leaves no moment at which the socket is known to listen. Built here (granian's own code
    path on other platforms), the socket listens before any worker starts and its port can be read.
    """

    def _init_shared_socket(self) -> None:
        holder = ListenerSpec(self.bind_addr, self.bind_port, self.backlog).build()
        self._listen_fd = int(holder.get_fd())
        # The attributes granian's workers read (declared None in granian's own annotations).
        self._shd, self._sfd, self._ssp = holder, self._listen_fd, None  # type: ignore[assignment]

    def bound_port(self) -> int:
        return _port_of(self._listen_fd)


def _port_of(fd: int) -> int:
    with socket.socket(fileno=os.dup(fd)) as sock:
        return int(sock.getsockname()[1])


class _SharedSocketGranian(MPServer):
    """Granian's worker processes on one listening socket built here (granian's own path on other
    platforms; on Linux each worker would bind its own SO_REUSEPORT socket): one accept queue for all,
    and port 0 means one port."""

    def _init_shared_socket(self) -> None:
        # What granian's MPServer does where there is no SO_REUSEPORT: one socket, inherited by every worker.
        holder = ListenerSpec(self.bind_addr, self.bind_port, self.backlog).build()
        self.listen_fd = int(holder.get_fd())
        self._shd, self._sfd, self._ssp = holder, self.listen_fd, None  # type: ignore[assignment]
        self._sso = socket.socket(fileno=self.listen_fd)
        self._sso.set_inheritable(True)


def app_from_environment() -> Starlette:
    """The app of one worker process: its settings come from the ``MEDIA_GATEWAY_*`` environment."""
    settings = Settings.from_env()
    logformat.configure(settings.log_level, settings.log_format)  # a spawned worker starts unconfigured
    return create_app(settings)


def serve_workers(settings: Settings) -> None:
    """``python -m media_gateway`` with ``settings.worker_count`` granian workers, each a process with its own
    app built from the environment; blocks until SIGINT or SIGTERM (granian's own handlers)."""
    server = _SharedSocketGranian(
        "media_gateway.serve:app_from_environment",
        factory=True,
        address=settings.host,
        port=settings.port,
        workers=settings.worker_count,
        interface=Interfaces.ASGINL,
        log_level=LogLevels(settings.log_level),
        log_dictconfig=_granian_logging(settings),
        log_access=True,
        websockets=False,
    )

    def listening() -> None:  # called once the socket is bound, before the workers start
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        url = f"http://{host}:{_port_of(server.listen_fd)}"  # the real port, when port 0 was asked for
        logger.info("media gateway (granian, %d workers) listening on %s", settings.worker_count, url)

    server.on_startup(listening)
    server.on_shutdown(lambda: logger.info("media gateway stopping"))
    server.serve()


def _granian_logging(settings: Settings) -> dict[str, Any]:
    # Granian's loggers propagate to the root logger that ``__main__`` (or pytest) configured; granian
    # otherwise installs its own stdout handlers.
    return {
        "handlers": {},
        "loggers": {"_granian": {"handlers": [], "propagate": True}, "granian.access": {"handlers": []}},
    }


@contextlib.asynccontextmanager
async def running_granian(settings: Settings) -> AsyncIterator[RunningGateway]:
    """Serve ``create_app(settings)`` under granian (one worker, in this event loop) until the block exits."""
    app = create_app(settings)
    server = _Granian(
        app,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGINL,  # the app has no lifespan work
        log_level=LogLevels(settings.log_level),
        log_dictconfig=_granian_logging(settings),
        log_access=True,  # one line per request, like uvicorn's (through the root logger's format)
        websockets=False,
    )
    listening = asyncio.Event()
    server.on_startup(listening.set)  # called right after the socket is bound, before the worker starts
    serving = asyncio.create_task(server.serve(), name="media-gateway-granian")
    waiter = asyncio.create_task(listening.wait())
    await asyncio.wait({serving, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not listening.is_set():
        waiter.cancel()
        try:
            serving.result()
        except Exception as exc:  # granian raises its own errors (OSError subclasses in Rust) on bind failures
            raise RuntimeError(f"media gateway could not listen on {settings.listen}: {exc}") from exc
        raise RuntimeError(f"media gateway could not listen on {settings.listen}")
    try:
        yield RunningGateway(app, settings.host, server.bound_port())
    finally:
        server.stop()  # type: ignore[no-untyped-call]
        await serving


async def serve_forever(settings: Settings) -> None:
    """``python -m media_gateway``: serve under ``settings.server`` until SIGINT or SIGTERM."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = running_granian if settings.server == "granian" else running_gateway
    async with runner(settings) as gateway:
        logger.info("media gateway (%s) listening on %s", settings.server, gateway.base_url)
        await stop.wait()
        logger.info("media gateway stopping")
