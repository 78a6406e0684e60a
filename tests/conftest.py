"""Shared fixtures: the real simulator, service and gateway on loopback, each on a free port; a headless
Chromium driven over the DevTools protocol."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import httpx
import pytest

from browser_helpers import CHROMIUM_FLAGS, DevTools
from comfy_simulator import Simulator, SimulatorSettings, running
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from generation_service.server import running_service
from media_gateway.serve import running_gateway
from media_gateway.settings import Settings as GatewaySettings
from stack_helpers import Stack, StackFactory, service_settings


@pytest.fixture
async def simulator(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with running(SimulatorSettings(data_dir=tmp_path / "comfy")) as sim:
        yield sim


@pytest.fixture
async def stack_factory(tmp_path: Path, simulator: Simulator) -> AsyncIterator[StackFactory]:
    """Builds a Stack against the simulator; ``via_swarm`` puts SwarmUI's proxy path in front."""
    async with contextlib.AsyncExitStack() as cleanups:

        async def build(**overrides: object) -> Stack:
            runs = tmp_path / "runs"
            runs.mkdir(exist_ok=True)
            gateway = await cleanups.enter_async_context(
                running_gateway(GatewaySettings(runs_dir=runs, listen="127.0.0.1:0"))
            )
            via_swarm = overrides.pop("via_swarm", False)
            overrides.setdefault("backend_url", simulator.swarm_url if via_swarm else simulator.comfy_url)
            settings = service_settings(tmp_path, gateway.base_url, **overrides)
            service = await cleanups.enter_async_context(running_service(settings))
            channel = await cleanups.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{service.port}"))
            http = await cleanups.enter_async_context(httpx.AsyncClient(base_url=gateway.base_url))
            return Stack(simulator, service, gateway, pb_grpc.GenerationServiceStub(channel), http, runs)

        yield build


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    return await stack_factory()


@pytest.fixture
async def devtools(tmp_path: Path) -> AsyncIterator[DevTools]:
    binary = shutil.which("chromium")
    assert binary is not None, "Debian's chromium package is required (`make test` installs it)"
    profile = tmp_path / "chromium-profile"
    proc = await asyncio.create_subprocess_exec(
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(60):
            while True:  # Chromium prints the browser websocket URL once it listens
                line = (await proc.stderr.readline()).decode(errors="replace")
                seen.append(line)
                if not line:
                    raise AssertionError("chromium exited before DevTools listened:\n" + "".join(seen))
                found = re.search(r"DevTools listening on (ws://\S+)", line)
                if found:
                    break
        drain = asyncio.create_task(proc.stderr.read())  # keep the pipe from filling up
        async with aiohttp.ClientSession() as http, http.ws_connect(found.group(1), max_msg_size=0) as ws:
            client = DevTools(ws)
            try:
                yield client
            finally:
                client.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await client.reader
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        if "drain" in locals():
            await drain
