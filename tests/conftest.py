"""Shared fixtures: the real simulator, service and gateway on loopback, each on a free port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

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
