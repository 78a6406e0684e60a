"""Shared fixtures: the real simulator, service and gateway on loopback, each on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import pytest

from comfy_simulator import Simulator, SimulatorSettings, running
from generation_service.server import running_service
from generation_service.v1 import generation_pb2_grpc as pb_grpc
from media_gateway.serve import running_gateway
from media_gateway.settings import Settings as GatewaySettings
from stack_helpers import Stack, service_settings


@pytest.fixture
async def simulator(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with running(SimulatorSettings(data_dir=tmp_path / "comfy")) as sim:
        yield sim


@pytest.fixture
async def stack_factory(tmp_path: Path, simulator: Simulator) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    """Builds a Stack against the simulator; ``via_swarm`` puts SwarmUI's proxy path in front."""

    async def build(**overrides: object) -> Stack:
        runs = tmp_path / "runs"
        runs.mkdir(exist_ok=True)
        gateway_cm = running_gateway(GatewaySettings(runs_dir=runs, listen="127.0.0.1:0"))
        gateway = await gateway_cm.__aenter__()
        cleanups.append(lambda: gateway_cm.__aexit__(None, None, None))
        via_swarm = bool(overrides.pop("via_swarm", False))
        backend_url = simulator.swarm_url if via_swarm else simulator.comfy_url
        service_cm = running_service(service_settings(tmp_path, backend_url, gateway.base_url, **overrides))
        service = await service_cm.__aenter__()
        cleanups.append(lambda: service_cm.__aexit__(None, None, None))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        cleanups.append(channel.close)
        http = httpx.AsyncClient(base_url=gateway.base_url)
        cleanups.append(http.aclose)
        return Stack(simulator, service, gateway, pb_grpc.GenerationServiceStub(channel), http, runs)

    cleanups: list[Callable[[], Awaitable[object]]] = []
    yield build
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def stack(stack_factory: Callable[..., Awaitable[Stack]]) -> Stack:
    return await stack_factory()
