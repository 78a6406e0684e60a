"""Wires the pieces into one aiohttp server on a real socket: ``Simulator`` and ``running()``."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
from collections.abc import AsyncIterator

from aiohttp import web

from .executor import Executor
from .faults import Faults
from .messaging import Messenger
from .middleware import PROXY_PREFIX, fault_middleware, origin_middleware
from .paths import Folders
from .prompt_queue import PromptQueue, parallel_prompt_worker, prompt_worker
from .proxy import SwarmProxy
from .server import ComfyApi
from .settings import SimulatorSettings

TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"  # sic: ComfyUI's alphabet has no 'w'


class Simulator:
    """One running simulated ComfyUI + SwarmUI proxy. Build it with ``running()``."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.faults = Faults()
        self.folders = Folders(settings)
        letters = settings.temp_letters or "".join(random.choice(TEMP_LETTERS) for _ in range(5))
        self.api: ComfyApi | None = None
        self._letters = letters
        self._runner: web.AppRunner | None = None
        self._worker: asyncio.Task[None] | None = None
        self._proxy = SwarmProxy(settings)
        self.port = 0

    @property
    def comfy_url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def swarm_url(self) -> str:
        return self.comfy_url + PROXY_PREFIX

    async def start(self) -> None:
        s = self.settings
        for folder in (s.output_dir, s.input_dir):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(s.temp_dir, ignore_errors=True)
        s.temp_dir.mkdir(parents=True, exist_ok=True)
        messenger = Messenger(self.faults, {}, lambda: {"exec_info": {"queue_remaining": 0}})
        messenger.sent_hook = s.frame_sent_hook
        queue = PromptQueue(messenger, self.faults)
        executor = Executor(s, self.folders, messenger, self._letters)
        api = ComfyApi(s, self.faults, self.folders, messenger, queue, executor)
        messenger.server_features = api.features()
        messenger.queue_info = api.queue_info
        self.api = api
        app = web.Application(
            middlewares=[fault_middleware(self.faults), origin_middleware()], client_max_size=s.max_upload_size
        )
        api.add_routes(app)
        app.router.add_route("*", PROXY_PREFIX + "/{tail:.*}", self._proxy.handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        await self._proxy.start(self.comfy_url)
        messenger.start()
        if s.parallel_prompts > 1:
            worker = parallel_prompt_worker(
                queue, lambda: Executor(s, self.folders, messenger, self._letters), messenger, s.parallel_prompts
            )
        else:
            worker = prompt_worker(queue, executor, messenger)
        self._worker = asyncio.create_task(worker)

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self._proxy.stop()
        if self.api is not None:
            await self.api.messenger.stop()
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def running(settings: SimulatorSettings) -> AsyncIterator[Simulator]:
    """Start a simulator on a real loopback socket in the current event loop; stop it cleanly on exit."""
    sim = Simulator(settings)
    try:
        await sim.start()
        yield sim
    finally:
        await sim.stop()
