"""SwarmUI's registry of ComfyUI backends (``src/Backends/BackendHandler.cs``): ids, status, enabled, and
what deleting, toggling, restarting and adding one does (``src/WebAPI/BackendAPI.cs``).

Two backend types, as SwarmUI has them:

- ``comfyui_selfstart`` ("ComfyUI Self-Starting", ``ComfyUISelfStartBackend.cs``): SwarmUI runs the ComfyUI
  process, so shutting the backend down (disable, delete, restart) kills it, and initialising starts a fresh
  one: empty queue and history.
- ``comfyui_api`` ("ComfyUI API By URL", ``ComfyUIAPIBackend.cs``): SwarmUI only connects to a ComfyUI that
  runs anyway; shutting the backend down leaves that ComfyUI (its queue, history, websockets) alone.

Status changes happen in the order SwarmUI makes them; in the simulator a start takes no time, so only a
restart with ``hold`` leaves a backend observably ``loading``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .comfyui import ComfyUI

SELF_START = "comfyui_selfstart"
API_BY_URL = "comfyui_api"
OVER_QUEUE = 1  # both types' default OverQueue setting; InitInternal sets MaxUsages = 1 + OverQueue


class Status(StrEnum):
    """``BackendStatus``, lower-cased as ListBackends reports it."""

    DISABLED = "disabled"
    ERRORED = "errored"
    WAITING = "waiting"
    LOADING = "loading"
    IDLE = "idle"
    RUNNING = "running"


@dataclass(eq=False)
class SwarmBackend:
    id: int
    comfy: ComfyUI
    self_start: bool
    status: Status = Status.WAITING
    enabled: bool = True
    title: str = ""
    max_usages: int = 1  # AbstractBackend's default until the first init
    last_used: float | None = None  # monotonic time the proxy last sent it a prompt (UpdateLastReleaseTime)

    def touch(self) -> None:
        self.last_used = time.monotonic()

    @property
    def type(self) -> str:
        return SELF_START if self.self_start else API_BY_URL

    def settings(self) -> dict[str, Any]:
        """The type's settings with their defaults, in declaration order (``SaveAllWithoutSecretValues``)."""
        if not self.self_start:
            return {"Address": self.comfy.url, "AllowIdle": False, "OverQueue": OVER_QUEUE, "EnableFrontendDev": False}
        return {
            "StartScript": "dlbackend/comfy/ComfyUI/main.py",  # what SwarmUI's installer sets
            "ExtraArgs": "",
            "DisableInternalArgs": False,
            "AutoUpdate": "false",
            "UpdateManagedNodes": "false",
            "FrontendVersion": "LatestSwarmValidated",
            "EnablePreviews": "true",
            "GPU_ID": str(self.id),  # one GPU per backend, the usual reason to have several
            "OverQueue": OVER_QUEUE,
            "AutoRestart": True,
        }


# (backend id, settings overrides of its ComfyUI) → a new ComfyUI listening on a port of its own, not started.
Spawn = Callable[[int, Mapping[str, Any]], Awaitable[ComfyUI]]


class SwarmBackends:
    def __init__(self, spawn: Spawn) -> None:
        self.backends: dict[int, SwarmBackend] = {}
        self._spawn = spawn
        self._next_id = 0  # BackendHandler.LastBackendID: ids of deleted backends are not given out again

    def running(self) -> list[SwarmBackend]:
        """``RunningBackendsOfType``: RUNNING ones, by ascending id (how SwarmUI's dictionary enumerates)."""
        return [b for _, b in sorted(self.backends.items()) if b.status is Status.RUNNING]

    def get(self, backend_id: int) -> SwarmBackend:
        return self.backends[backend_id]

    async def register(self, backend_id: int, comfy: ComfyUI, self_start: bool) -> SwarmBackend:
        backend = SwarmBackend(backend_id, comfy, self_start)
        self.backends[backend_id] = backend
        self._next_id = max(self._next_id, backend_id + 1)
        await self._init(backend)
        return backend

    async def add(self, backend_id: int | None = None, **overrides: Any) -> SwarmBackend:
        """``AddNewOfType`` for a self-started backend: the next id unless given; ``overrides`` are settings
        of its ComfyUI (e.g. ``without_nodes``, ``model_step_seconds``)."""
        backend_id = self._next_id if backend_id is None else backend_id
        if backend_id in self.backends:
            raise ValueError(f"backend id {backend_id} is already in use")
        comfy = await self._spawn(backend_id, overrides)
        return await self.register(backend_id, comfy, self_start=True)

    async def remove(self, backend_id: int) -> bool:
        """``DeleteById``; False when there was no such backend ("Already didn't exist.")."""
        backend = self.backends.pop(backend_id, None)
        if backend is None:
            return False
        await self._shutdown(backend)
        return True

    async def set_enabled(self, backend_id: int, enabled: bool) -> bool:
        """``ToggleBackend``; False when nothing changed ("No change.")."""
        backend = self.backends[backend_id]
        if backend.enabled == enabled:
            return False
        backend.enabled = enabled
        if backend.status not in (Status.DISABLED, Status.ERRORED):
            await self._shutdown(backend)
        if enabled:
            await self._init(backend)
        return True

    async def restart(self, backend_id: int, hold: bool = False) -> bool:
        """``RestartBackends`` for one id: only a RUNNING or ERRORED backend restarts (False otherwise).
        ``hold`` (simulator only) leaves it ``loading``, its ComfyUI not yet up, until the next restart."""
        backend = self.backends[backend_id]
        if backend.status is Status.LOADING:  # only a held restart stays loading
            await self._init(backend)
            return True
        if backend.status not in (Status.RUNNING, Status.ERRORED):
            return False
        await self._shutdown(backend)
        await self._init(backend, hold)
        return True

    async def _shutdown(self, backend: SwarmBackend) -> None:
        """``ShutdownBackendCleanly``: proxied prompts do not count as usages, so there is nothing to wait
        for; ``Shutdown`` leaves the backend DISABLED."""
        backend.status = Status.DISABLED
        if backend.self_start:
            await backend.comfy.stop()

    async def _init(self, backend: SwarmBackend, hold: bool = False) -> None:
        """``DoInitBackend`` → ``LoadBackendDirect`` → ``Init``."""
        backend.status = Status.WAITING
        if not backend.enabled:
            backend.status = Status.DISABLED
            return
        backend.status = Status.LOADING
        if hold:
            return
        if backend.self_start and not backend.comfy.running:
            await backend.comfy.start()
        if not backend.comfy.running:  # an API-by-URL backend whose ComfyUI is gone: its init attempts fail
            backend.status = Status.ERRORED
            return
        backend.max_usages = 1 + OVER_QUEUE
        backend.status = Status.RUNNING
