"""Wires the pieces into one aiohttp server on a real socket: ``Simulator`` and ``running()``.

That server is a ComfyUI (at ``/`` and ``/api/``) and, on the same port, a SwarmUI in front of its
ComfyUI backends (``/ComfyBackendDirect/``, ``/API/``) plus the simulator's ``/sim/`` control routes.
Further self-started backends are ComfyUIs on ports of their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

from .admin import Admin
from .comfyui import ComfyUI
from .middleware import PROXY_PREFIX, swarm_auth_middleware
from .proxy import SwarmProxy
from .server import ComfyApi
from .settings import SimulatorSettings
from .swarm_api import SwarmApi
from .swarm_backends import SwarmBackends


def http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _listen(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, int(runner.addresses[0][1])


class Simulator:
    """One running simulated ComfyUI + SwarmUI. Build it with ``running()``.

    ``comfy`` (and its ``faults``, ``folders``, ``api``) is the ComfyUI at ``comfy_url``; ``swarm`` holds
    SwarmUI's backends (``swarm.get(1).comfy`` is backend 1's ComfyUI), ``swarm_api`` its sessions.
    """

    def __init__(self, settings: SimulatorSettings) -> None:
        if settings.swarm_backends and settings.backend_ids != (0,):
            raise ValueError("backend_ids and swarm_backends exclude each other: swarm_backends numbers its own")
        self.settings = settings
        self.comfy = ComfyUI(settings)
        self.faults = self.comfy.faults
        self.folders = self.comfy.folders
        self.swarm = SwarmBackends(self._spawn)
        self.swarm_api = SwarmApi(settings, self.swarm)
        self._proxy = SwarmProxy(settings, self.swarm)
        self._comfies: list[ComfyUI] = [self.comfy]
        self._runners: list[web.AppRunner] = []
        self.port = 0

    @property
    def api(self) -> ComfyApi:
        return self.comfy.api

    @property
    def comfy_url(self) -> str:
        return http_url(self.settings.host, self.port)

    @property
    def swarm_url(self) -> str:
        return self.comfy_url + PROXY_PREFIX

    async def start(self) -> None:
        s = self.settings
        app = self.comfy.build_app(outer_middlewares=[swarm_auth_middleware(s.swarm_authorization)])
        app.router.add_route("*", PROXY_PREFIX + "/{tail:.*}", self._proxy.handle)
        self.swarm_api.add_routes(app)
        Admin(self.swarm, self.swarm_api).add_routes(app)
        runner, self.port = await _listen(app, s.host, s.port)
        self._runners.append(runner)
        self.comfy.url = self.comfy_url
        await self._proxy.start()
        await self.comfy.start()
        if s.swarm_backends:
            await self.swarm.register(0, self.comfy, self_start=True)
            for _ in range(1, s.swarm_backends):
                await self.swarm.add()
        else:
            for backend_id in s.backend_ids:
                await self.swarm.register(backend_id, self.comfy, self_start=False)

    async def _spawn(self, backend_id: int, overrides: Mapping[str, Any]) -> ComfyUI:
        """A further ComfyUI with a data folder and a port of its own (a self-started backend's process)."""
        data_dir = self.settings.data_dir / f"backend-{backend_id}"
        comfy = ComfyUI(dataclasses.replace(self.settings, data_dir=data_dir, port=0, **overrides))
        runner, port = await _listen(comfy.build_app(), self.settings.host, 0)
        self._runners.append(runner)
        self._comfies.append(comfy)
        comfy.url = http_url(self.settings.host, port)
        return comfy

    async def stop(self) -> None:
        await self._proxy.stop()
        for comfy in self._comfies:
            await comfy.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()


@contextlib.asynccontextmanager
async def running(settings: SimulatorSettings) -> AsyncIterator[Simulator]:
    """Start a simulator on a real loopback socket in the current event loop; stop it cleanly on exit."""
    sim = Simulator(settings)
    try:
        await sim.start()
        yield sim
    finally:
        await sim.stop()
