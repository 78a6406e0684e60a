"""The backend pool against real simulator processes: runs spread by load and capability, a backend that is
SIGKILLed loses its runs to the others (queued ones move, executing ones fail or start over), a backend
that comes back gets work again, and a restarted service resumes runs on the backends they were on."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from comfy_generation.runstore import RunStore
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from event_checks import assert_one_run
from generation_service.server import running_service
from process_helpers import SimProcess, free_port, start_simulator
from stack_helpers import SIM_WORKFLOWS, service_settings

SimFactory = Callable[..., Awaitable[SimProcess]]


@pytest.fixture
async def simulators(tmp_path: Path) -> AsyncIterator[SimFactory]:
    started: list[SimProcess] = []

    async def start(name: str, *flags: str, port: int = 0) -> SimProcess:
        sim = await start_simulator(tmp_path / name, port or free_port(), *flags)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        if sim.proc.returncode is None:
            await sim.kill()


@contextlib.asynccontextmanager
async def pool_service(tmp_path: Path, urls: list[str], **overrides: Any) -> AsyncIterator[Any]:
    values: dict[str, Any] = {"health_check_seconds": 0.2, "backend_down_seconds": 1.0, "keepalive_seconds": 0.2}
    settings = service_settings(tmp_path, "http://127.0.0.1:8080", backend_url=",".join(urls), **(values | overrides))
    async with running_service(settings) as service:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        try:
            yield pb_grpc.GenerationServiceStub(channel)
        finally:
            await channel.close()


def sampler(steps: int = 10, seconds: float = 1.0, blur: bool = False) -> str:
    graph = json.loads((SIM_WORKFLOWS / "image.json").read_text())
    graph["1"]["inputs"].update(width=32, height=32)
    graph["2"]["inputs"].update(steps=steps, seconds=seconds)
    if blur:
        graph["4"] = {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 1, "sigma": 1.0}}
        graph["3"]["inputs"]["images"] = ["4", 0]
    return json.dumps(graph)


async def run_events(stub: Any, **fields: Any) -> list[pb.RunEvent]:
    return [reply.event async for reply in stub.Generate(pb.GenerateRequest(spec=pb.RunSpec(**fields)))]


async def until_backend(stub: Any, url: str, up: bool) -> None:
    async with asyncio.timeout(20):
        while True:
            backends = {b.name: b for b in (await stub.ListBackends(pb.ListBackendsRequest())).backends}
            if backends[url].up is up:
                return
            await asyncio.sleep(0.1)


async def history_has(url: str, prompt_id: str) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/history/{prompt_id}") as resp:
        return prompt_id in await resp.json()


async def test_runs_spread_by_load_and_capability(tmp_path: Path, simulators: SimFactory) -> None:
    fast = await simulators("fast", "--sampler-speed", "4")
    slow = await simulators("slow")
    no_blur = await simulators("no-blur", "--without-nodes", "ImageBlur")
    async with pool_service(tmp_path, [fast.url, slow.url, no_blur.url]) as stub:
        backends = (await stub.ListBackends(pb.ListBackendsRequest())).backends
        assert {b.name for b in backends} == {fast.url, slow.url, no_blur.url} and all(b.up for b in backends)
        in_flight = asyncio.Semaphore(6)  # callers that submit the next run when one ends

        async def one(i: int) -> tuple[bool, list[pb.RunEvent]]:
            blur = i % 3 == 0
            async with in_flight:
                return blur, await run_events(stub, workflow_json=sampler(steps=8, seconds=0.8, blur=blur))

        results = await asyncio.gather(*(one(i) for i in range(30)))
    placed: Counter[str] = Counter()
    for blur, events in results:
        assert_one_run(events)
        assert events[-1].HasField("completed"), events[-1]
        backend = events[0].accepted.backend
        placed[backend] += 1
        assert not (blur and backend == no_blur.url), "a run needing ImageBlur went to the backend without it"
    assert set(placed) == {fast.url, slow.url, no_blur.url}
    assert placed[fast.url] > placed[slow.url] and placed[fast.url] > placed[no_blur.url], placed


@pytest.mark.parametrize("retry", [False, True])
async def test_a_killed_backend_loses_its_runs_to_the_others(
    tmp_path: Path, simulators: SimFactory, retry: bool
) -> None:
    doomed = await simulators("doomed")
    spare_port = free_port()
    spare_url = f"http://127.0.0.1:{spare_port}"
    async with pool_service(tmp_path, [doomed.url, spare_url]) as stub:
        await until_backend(stub, spare_url, up=False)  # not started yet: every run goes to the doomed one
        running = (
            await stub.Submit(
                pb.SubmitRequest(
                    spec=pb.RunSpec(workflow_json=sampler(steps=50, seconds=30), retry_on_backend_loss=retry)
                )
            )
        ).run
        queued = [
            (await stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=sampler(steps=4, seconds=0.4))))).run
            for _ in range(2)
        ]
        assert {r.backend for r in [running, *queued]} == {doomed.url}
        watchers = {r.run_id: asyncio.create_task(_watch(stub, r.run_id)) for r in [running, *queued]}
        await _until_started(stub, running.run_id)
        spare = await simulators("spare", "--sampler-speed", "20", port=spare_port)  # a retry starts over
        await until_backend(stub, spare.url, up=True)
        await doomed.kill()
        results = {run_id: await asyncio.wait_for(task, 60) for run_id, task in watchers.items()}

        for run in queued:
            events = results[run.run_id]
            assert_one_run(events)
            assert events[-1].HasField("completed"), events[-1]
            moved = [e for e in events if e.HasField("queued") and e.queued.backend]
            assert [e.queued.backend for e in moved] == [spare.url]
            got = (await stub.GetRun(pb.GetRunRequest(run_id=run.run_id))).run
            assert got.backend == spare.url and len(got.outputs) == 1
            assert await history_has(spare.url, got.prompt_id)
        events = results[running.run_id]
        assert_one_run(events)
        if retry:
            assert events[-1].HasField("completed"), events[-1]
            assert RunStore(tmp_path / "runs").read_record(running.run_id).retried
        else:
            assert events[-1].failed.code == pb.FAILURE_CODE_BACKEND_LOST
            assert doomed.url in events[-1].failed.message
        assert not [p for p in (tmp_path / "runs").rglob("*") if "output" in p.name and "partial" in p.name]

        back = await simulators("doomed", port=int(doomed.url.rsplit(":", 1)[1]))  # it comes back
        await until_backend(stub, back.url, up=True)
        placed = [
            (await run_events(stub, workflow_json=sampler(steps=2, seconds=0.1)))[0].accepted.backend for _ in range(4)
        ]
        assert back.url in placed, placed  # used again


async def _watch(stub: Any, run_id: str) -> list[pb.RunEvent]:
    return [reply.event async for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run_id))]


async def _until_started(stub: Any, run_id: str) -> None:
    async for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run_id)):
        event = reply.event
        if event.HasField("node_progress"):
            return
    raise AssertionError("the run ended before it started")


async def test_a_restarted_service_resumes_runs_on_the_backends_they_were_on(
    tmp_path: Path, simulators: SimFactory
) -> None:
    first, second = await simulators("first"), await simulators("second")
    async with pool_service(tmp_path, [first.url, second.url]) as stub:
        runs = [
            (await stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=sampler(steps=10, seconds=1.5))))).run
            for _ in range(4)
        ]
    assert {r.backend for r in runs} == {first.url, second.url}
    async with pool_service(tmp_path, [second.url, first.url]) as stub:
        for run in runs:
            events = await asyncio.wait_for(_watch(stub, run.run_id), 60)
            assert events[-1].HasField("completed"), events[-1]
            got = (await stub.GetRun(pb.GetRunRequest(run_id=run.run_id))).run
            assert got.backend == run.backend and await history_has(run.backend, got.prompt_id)


async def test_a_workflow_no_single_backend_can_run_fails_up_front(tmp_path: Path, simulators: SimFactory) -> None:
    no_blur = await simulators("no-blur", "--without-nodes", "ImageBlur")
    no_sampler = await simulators("no-sampler", "--without-nodes", "SimulatedSampler")
    async with pool_service(tmp_path, [no_blur.url, no_sampler.url]) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=sampler(blur=True))))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ImageBlur" in str(info.value.details()) and "SimulatedSampler" in str(info.value.details())
        assert not list((tmp_path / "runs").iterdir())  # refused before anything was recorded
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=sampler(), backend_labels=["gpu"])))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "labels" in str(info.value.details())


async def test_a_backend_that_comes_up_after_the_service_takes_runs_once_its_socket_connects(
    tmp_path: Path, simulators: SimFactory
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Probed once a minute: only its websocket connecting can tell the service it answers now.
    async with pool_service(tmp_path, [url], health_check_seconds=60.0) as stub:
        await until_backend(stub, url, up=False)
        await simulators("late", port=port)
        await until_backend(stub, url, up=True)
        events = await run_events(stub, workflow_json=sampler(steps=2, seconds=0.2))
        assert events[-1].HasField("completed")
