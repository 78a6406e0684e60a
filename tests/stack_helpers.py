"""The running stack used by end-to-end tests: simulator, generation service and media gateway."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from comfy_simulator import Simulator
from generation_service.server import RunningService
from generation_service.settings import Settings
from media_gateway.serve import RunningGateway

if TYPE_CHECKING:  # a type that exists only in the generated .pyi
    from comfygen.v1.generation_pb2_grpc import GenerationServiceAsyncStub

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_WORKFLOWS = REPO / "workflows"  # run on a real ComfyUI
SIM_WORKFLOWS = REPO / "comfy_simulator" / "workflows"  # the simulator's fixtures (SimulatedSampler)


@dataclass
class Stack:
    """Simulator + generation service + media gateway, wired together as in production."""

    sim: Simulator
    service: RunningService
    gateway: RunningGateway
    stub: GenerationServiceAsyncStub
    http: httpx.AsyncClient
    runs_dir: Path


StackFactory = Callable[..., Awaitable[Stack]]
"""Builds a Stack; keyword arguments override service settings, ``via_swarm=True`` uses the proxy path."""


def service_settings(tmp_path: Path, gateway_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "runs_dir": tmp_path / "runs",
        "listen": "127.0.0.1:0",
        "media_base_url": gateway_url,
        "history_poll_seconds": 0.2,
        "lost_prompt_grace_seconds": 2.0,  # the tests' backends forget prompts on purpose, not by lag
        "shutdown_grace_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def scrape(stack: Stack) -> dict[str, float]:
    """The service's metrics (it runs with ``metrics_listen``), by sample name with its labels."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{stack.service.metrics_port}/metrics")).text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
