"""The pool over SwarmUI discovery, against the simulator playing a SwarmUI with several ComfyUI backends:
backends found through its API, every request of a run pinned to its backend (websocket included), and a
backend that disappears failing the runs executing on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from comfy_simulator import Simulator, SimulatorSettings, running
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from event_checks import assert_one_run
from generation_service.server import running_service
from stack_helpers import service_settings
from test_pool import sampler


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with running(SimulatorSettings(data_dir=tmp_path / "swarm", swarm_backends=2)) as sim:
        yield sim


@pytest.fixture
async def stub(tmp_path: Path, swarm: Simulator) -> AsyncIterator[Any]:
    settings = service_settings(
        tmp_path,
        "http://127.0.0.1:8080",
        swarm_url=swarm.comfy_url,
        swarm_refresh_seconds=0.2,
        health_check_seconds=0.2,
        backend_down_seconds=1.0,
    )
    async with running_service(settings) as service:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        yield pb_grpc.GenerationServiceStub(channel)
        await channel.close()


async def in_history(swarm: Simulator, backend_id: str, prompt_id: str) -> bool:
    url = f"{swarm.comfy_url}/ComfyBackendDirect/history/{prompt_id}"
    async with aiohttp.ClientSession() as http, http.get(url, headers={"X-Swarm-Backend-ID": backend_id}) as resp:
        return prompt_id in await resp.json()


async def test_discovered_backends_are_pinned_on_every_request(swarm: Simulator, stub: Any) -> None:
    backends = (await stub.ListBackends(pb.ListBackendsRequest())).backends
    assert sorted((b.name, b.swarm_backend_id, b.up) for b in backends) == [
        ("swarm-0", "0", True),
        ("swarm-1", "1", True),
    ]

    async def one() -> list[pb.RunEvent]:
        return [
            reply.event
            async for reply in stub.Generate(
                pb.GenerateRequest(spec=pb.RunSpec(workflow_json=sampler(steps=6, seconds=1.0)))
            )
        ]

    runs = await asyncio.gather(one(), one())
    placed = set()
    for events in runs:
        assert_one_run(events)
        assert events[-1].HasField("completed")
        assert [e for e in events if e.HasField("node_progress")]  # live frames: the websocket is pinned too
        backend_id = events[0].accepted.backend.removeprefix("swarm-")
        placed.add(backend_id)
        other = "1" if backend_id == "0" else "0"
        prompt_id = events[0].accepted.prompt_id
        assert await in_history(swarm, backend_id, prompt_id) and not await in_history(swarm, other, prompt_id)
    assert placed == {"0", "1"}


async def test_a_backend_that_disappears_fails_its_executing_runs(swarm: Simulator, stub: Any) -> None:
    run = (await stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=sampler(steps=40, seconds=20))))).run
    async for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id)):
        event = reply.event
        if event.HasField("node_progress"):
            break
    backend_id = int(run.backend.removeprefix("swarm-"))
    async with aiohttp.ClientSession() as http, http.delete(f"{swarm.comfy_url}/sim/backends/{backend_id}") as resp:
        assert resp.status == 200
    events = [reply.event async for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id))]
    assert_one_run(events)
    assert events[-1].failed.code == pb.FAILURE_CODE_BACKEND_LOST
    names = [b.name for b in (await stub.ListBackends(pb.ListBackendsRequest())).backends]
    assert run.backend not in names and len(names) == 1
