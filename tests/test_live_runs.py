"""Live runs against the simulator: previews of both frame types as `preview` events, latest-wins delivery
to a slow watcher, SaveImageWebsocket outputs, overall progress and estimates."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from comfy_simulator import Simulator, SimulatorSettings, media, running
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from event_checks import assert_coalesced, journaled, read_journal
from stack_helpers import Stack, StackFactory
from test_generate_e2e import assert_well_formed, fetch_output, kinds


@pytest.fixture(params=[True, False], ids=["type4", "type1"])
async def simulator(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    settings = SimulatorSettings(data_dir=tmp_path / "comfy", preview_method="taesd", preview_metadata=request.param)
    async with running(settings) as sim:
        yield sim


def sampler(steps: int, seconds: float, size: int = 256) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": 99}},
        "2": {"class_type": "SimulatedSampler", "inputs": {"steps": steps, "seconds": seconds, "images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "live"}},
    }


async def generate(stack: Stack, graph: dict[str, Any], **fields: Any) -> list[pb.RunEvent]:
    spec = pb.RunSpec(workflow_json=json.dumps(graph), **fields)
    return [reply.event async for reply in stack.stub.Generate(pb.GenerateRequest(spec=spec))]


async def test_previews_become_events(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    events = await generate(stack, sampler(4, 0.2), live_previews=True)
    assert_well_formed(journaled(events))
    previews = [e for e in events if e.WhichOneof("kind") == "preview"]
    assert [p.preview.number for p in previews] == [1, 2, 3, 4]
    for p in previews:
        assert (p.preview.node_id, p.preview.mime, p.preview.max) == ("2", "image/jpeg", 4)
        assert (p.preview.width, p.preview.height) == (256, 256)  # taesd: full size
        assert p.preview.image[:2] == b"\xff\xd8"
        before = events[events.index(p) - 1]
        assert p.seq == before.seq  # previews take no seq of their own
    assert len({p.preview.image for p in previews}) == 4
    # Not journaled; the latest one is removed at the end unless the request keeps it.
    run_id = events[0].run_id
    assert "preview" not in (stack.runs_dir / run_id / "events.jsonl").read_text()
    assert not list((stack.runs_dir / run_id).glob("preview.*"))
    kept = await generate(stack, sampler(3, 0.1), live_previews=True, keep_preview=True)
    last = [e for e in kept if e.WhichOneof("kind") == "preview"][-1]
    assert (stack.runs_dir / kept[0].run_id / "preview.jpg").read_bytes() == last.preview.image
    # Without live_previews a run gets none.
    assert "preview" not in kinds(await generate(stack, sampler(3, 0.1)))


async def test_slow_watcher_gets_newest_preview_and_every_other_event(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    spec = pb.RunSpec(workflow_json=json.dumps(sampler(40, 2.0, size=512)), live_previews=True)
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=spec))).run
    # The slow watcher opens its stream at the start, then reads nothing until the run has ended. Its
    # channel takes little before it reads (no window growth), so the service sees it fall behind.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.service.port}", options=options)
    slow_call = pb_grpc.GenerationServiceStub(channel).WatchRun(pb.WatchRunRequest(run_id=run.run_id))
    first = await slow_call.read()
    assert isinstance(first, pb.WatchRunResponse) and first.event.seq == 1
    fast = [r.event async for r in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id))]
    fast_previews = [e.preview.number for e in fast if e.WhichOneof("kind") == "preview"]
    assert fast_previews[-1] == 40
    slow = [first.event]
    while isinstance(reply := await slow_call.read(), pb.WatchRunResponse):
        slow.append(reply.event)
    # Every other event, byte for byte; progress coalesced (each node's newest, as the slow one catches up).
    journal = read_journal(stack.runs_dir, run.run_id)
    assert_coalesced(fast, journal)
    assert_coalesced(slow, journal)
    assert len(journaled(slow)) < len(journal)
    # What its transport held when it stopped reading, then the newest preview, never the backlog.
    slow_previews = [e.preview.number for e in slow if e.WhichOneof("kind") == "preview"]
    assert slow_previews[-1] == 40 and len(slow_previews) < 20
    await channel.close()


@pytest.mark.parametrize("simulator", [True], indirect=True, ids=["type4"])
async def test_save_image_websocket_outputs_are_stored(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": 1122867}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }
    events = await generate(stack, graph)
    assert_well_formed(events)
    completed = events[-1].completed
    assert [(o.node_id, o.mime, o.index) for o in completed.outputs] == [("2", "image/png", i) for i in range(3)]
    frame = media.png_bytes(np.full((64, 64, 3), (0x11, 0x22, 0x33), np.uint8))  # what the node sends
    for output in completed.outputs:
        assert await fetch_output(stack, output) == frame
    listed = (await stack.stub.GetRun(pb.GetRunRequest(run_id=events[0].run_id))).run.outputs
    assert list(listed) == list(completed.outputs)


@pytest.mark.parametrize("simulator", [True], indirect=True, ids=["type4"])
async def test_estimates_from_step_rate_then_from_history(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    graph = sampler(50, 5.0, size=64)  # 0.1 s per step
    events = await generate(stack, graph)
    end = events[-1].time.ToDatetime()
    tenth = next(e for e in events if e.WhichOneof("kind") == "node_progress" and e.node_progress.value == 10)
    guess = tenth.node_progress.estimate
    assert guess.basis == pb.ESTIMATE_BASIS_STEP_RATE  # no earlier run: the sampler's rate alone
    real = (end - tenth.time.ToDatetime()).total_seconds()
    assert abs(guess.remaining.ToTimedelta().total_seconds() - real) <= 0.2 * real
    assert 0.0 < tenth.node_progress.overall < 1.0
    overall = [e.node_progress.overall for e in events if e.WhichOneof("kind") == "node_progress"]
    assert overall == sorted(overall)
    assert not next(e for e in events if e.WhichOneof("kind") == "started").started.HasField("estimate")

    # The same workflow again, with ComfyUI's cache emptied so it executes again.
    assert (await stack.http.post(stack.sim.comfy_url + "/free", json={"free_memory": True})).status_code == 200
    spec = pb.RunSpec(workflow_json=json.dumps(graph))
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=spec))).run
    second: list[pb.RunEvent] = []
    async for reply in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id)):
        second.append(reply.event)
        if reply.event.WhichOneof("kind") == "node_progress" and reply.event.node_progress.value == 1:
            # The sampler has 4.9 s to go: the run is still in it.
            current = (await stack.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))).run
            assert current.HasField("estimate")  # Run carries the latest estimate
    started = next(e for e in second if e.WhichOneof("kind") == "started").started
    assert started.estimate.basis == pb.ESTIMATE_BASIS_HISTORY  # before its first step
    assert abs(started.estimate.remaining.ToTimedelta().total_seconds() - 5.0) < 2.0
    sampling = next(e for e in second if e.WhichOneof("kind") == "node_started" and e.node_started.node_id == "2")
    assert sampling.node_started.estimate.basis == pb.ESTIMATE_BASIS_HISTORY
    assert (stack.runs_dir / "estimates.json").is_file()  # kept in run storage, for a restarted service
