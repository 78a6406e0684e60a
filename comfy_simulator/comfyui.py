"""One simulated ComfyUI process: its routes, folders and faults, and a start / stop that behave like
launching and killing the process (queue, history, websockets and caches live only while it runs)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from .executor import Executor
from .faults import Faults
from .messaging import Messenger
from .middleware import fault_middleware, origin_middleware
from .nodes import NODE_CLASSES
from .paths import Folders
from .prompt_queue import PromptQueue, parallel_prompt_worker, prompt_worker
from .server import ComfyApi
from .settings import SimulatorSettings

TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"  # sic: ComfyUI's alphabet has no 'w'


class ComfyUI:
    """Routes are registered once (``build_app``); ``start`` boots a fresh process behind them and ``stop``
    kills it. Files in output/ and input/ survive a restart, as on disk; temp/ is wiped on every start."""

    def __init__(self, settings: SimulatorSettings) -> None:
        unknown = sorted(settings.without_nodes - NODE_CLASSES.keys())
        if unknown:
            raise ValueError(f"without_nodes names node classes the simulator does not know: {', '.join(unknown)}")
        if settings.sampler_speed <= 0:
            raise ValueError(f"sampler_speed must be positive, not {settings.sampler_speed}")
        self.settings = settings
        self.faults = Faults()
        self.folders = Folders(settings)
        self.api = ComfyApi(settings, self.faults, self.folders)
        self.url = ""  # set by whoever binds its port
        self.running = False
        self._messenger: Messenger | None = None
        self._worker: asyncio.Task[None] | None = None

    def build_app(self, outer_middlewares: Sequence[Any] = ()) -> web.Application:
        middlewares = [*outer_middlewares, fault_middleware(self.faults, lambda: self.running), origin_middleware()]
        app = web.Application(middlewares=middlewares, client_max_size=self.settings.max_upload_size)
        self.api.add_routes(app)
        return app

    async def start(self) -> None:
        s = self.settings
        for folder in (s.output_dir, s.input_dir):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(s.temp_dir, ignore_errors=True)
        s.temp_dir.mkdir(parents=True, exist_ok=True)
        letters = s.temp_letters or "".join(random.choice(TEMP_LETTERS) for _ in range(5))
        messenger = Messenger(self.faults, self.api.features(), self.api.queue_info)
        messenger.sent_hook = s.frame_sent_hook
        queue = PromptQueue(messenger, self.faults)
        executor = Executor(s, self.folders, messenger, letters)
        self.api.attach(messenger, queue, executor)
        messenger.start()
        if s.parallel_prompts > 1:
            worker = parallel_prompt_worker(
                queue, lambda: Executor(s, self.folders, messenger, letters), messenger, s.parallel_prompts
            )
        else:
            worker = prompt_worker(queue, executor, messenger)
        self._messenger, self._worker = messenger, asyncio.create_task(worker)
        self.running = True

    async def stop(self) -> None:
        """The running prompt ends mid-node and every websocket closes; a second stop does nothing."""
        self.running = False
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._messenger is not None:
            await self._messenger.stop()
            self._messenger = None
