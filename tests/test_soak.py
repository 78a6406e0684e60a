"""Soak: many concurrent runs under random cancels, socket drops and backend errors. Bounded in
count and time. Every run must end exactly once, completed runs hold exactly their own outputs, and
no event sequence has a gap or a duplicate."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random

import av
import grpc

from comfygen.v1 import generation_pb2 as pb
from stack_helpers import SIM_WORKFLOWS, StackFactory

RUNS = 24
CONCURRENCY = 8
CHAOS_STEPS = 40


def workflow(color: int, steps: int) -> str:
    graph = json.loads((SIM_WORKFLOWS / "image.json").read_text())
    graph["1"]["inputs"].update(width=32, height=32, color=color)
    graph["2"]["inputs"].update(steps=steps, seconds=steps * 0.03)
    return json.dumps(graph)


async def test_soak_every_run_ends_once_with_its_own_outputs(stack_factory: StackFactory) -> None:
    stack = await stack_factory(keepalive_seconds=0.2, backend_retries=2)
    rng = random.Random(20261130)
    colors = rng.sample(range(1, 0xFFFFFF), RUNS)
    limit = asyncio.Semaphore(CONCURRENCY)
    chaos_done = asyncio.Event()

    async def chaos() -> None:
        faults = stack.sim.faults
        for _ in range(CHAOS_STEPS):
            choice = rng.random()
            if choice < 0.3:
                faults.drop_socket_after_frames = rng.randint(0, 12)
            elif choice < 0.45:
                faults.http_500_paths = {"/history"}
            else:
                faults.reset()
            await asyncio.sleep(rng.uniform(0.05, 0.2))  # pacing of random faults, not synchronisation
        faults.reset()
        chaos_done.set()

    async def one(color: int) -> tuple[int, list[pb.RunEvent]]:
        async with limit:
            run = (
                await stack.stub.Submit(
                    pb.SubmitRequest(spec=pb.RunSpec(workflow_json=workflow(color, rng.randint(2, 10))))
                )
            ).run
            if rng.random() < 0.25:
                await asyncio.sleep(rng.uniform(0, 0.3))
                await stack.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id, reason="soak"))
            events = [reply.event async for reply in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id))]
            return color, events

    chaos_task = asyncio.create_task(chaos())
    async with asyncio.timeout(120):
        results = await asyncio.gather(*(one(c) for c in colors), return_exceptions=True)
        await chaos_done.wait()
    await chaos_task

    ends: dict[str, int] = {}
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):  # Submit itself may meet an outage: UNAVAILABLE only
            assert result.code() == grpc.StatusCode.UNAVAILABLE, result
            continue
        assert not isinstance(result, BaseException), result
        color, events = result
        kinds = [e.WhichOneof("kind") for e in events]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        terminal = [k for k in kinds if k in ("completed", "failed", "cancelled")]
        assert terminal == [kinds[-1]], kinds
        ends[kinds[-1] or ""] = ends.get(kinds[-1] or "", 0) + 1
        run = (await stack.stub.GetRun(pb.GetRunRequest(run_id=events[0].run_id))).run
        assert pb.RunStatus.Name(run.status).lower().endswith(kinds[-1] or "")
        if kinds[-1] != "completed":
            assert not run.outputs
            continue
        (output,) = events[-1].completed.outputs
        assert list(run.outputs) == [output]
        body = (await stack.http.get(output.url)).content
        assert hashlib.sha256(body).hexdigest() == output.sha256
        with av.open(io.BytesIO(body), "r") as image:
            pixel = next(image.decode(video=0)).to_ndarray(format="rgb24")[0, 0]
        assert tuple(pixel) == ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    assert ends.get("completed", 0) >= RUNS // 3, ends  # the chaos must not drown every run
