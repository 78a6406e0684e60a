"""End to end: gRPC Generate → service → simulator → run storage → media gateway, all on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import av
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from comfy_generation.runstore.events import Cancelled
from comfygen.v1 import generation_pb2 as pb
from event_checks import assert_coalesced, assert_one_run, read_journal
from gateway_helpers import read_metadata
from stack_helpers import EXAMPLE_WORKFLOWS, SIM_WORKFLOWS, Stack, StackFactory


def load(name: str) -> dict[str, Any]:
    """A workflow made for the simulator (its SimulatedSampler shows progress)."""
    return json.loads((SIM_WORKFLOWS / name).read_text())


def example(name: str) -> dict[str, Any]:
    """One of the example workflows that run on a real ComfyUI."""
    return json.loads((EXAMPLE_WORKFLOWS / name).read_text())


async def generate(stack: Stack, graph: dict[str, Any], **fields: Any) -> list[pb.RunEvent]:
    request = pb.RunSpec(workflow_json=json.dumps(graph), **fields)
    return [reply.event async for reply in stack.stub.Generate(pb.GenerateRequest(spec=request))]


def kinds(events: list[pb.RunEvent]) -> list[str]:
    return [e.WhichOneof("kind") or "" for e in events]


def assert_well_formed(events: list[pb.RunEvent]) -> None:
    """One run: accepted first, exactly one terminal event, last, seq gaps only for coalesced progress."""
    assert_one_run(events)
    assert all(e.time.seconds > 0 for e in events)


async def fetch_output(stack: Stack, output: pb.Output) -> bytes:
    response = await stack.http.get(output.url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == output.mime
    assert hashlib.sha256(response.content).hexdigest() == output.sha256
    assert len(response.content) == output.size_bytes
    return response.content


def decode_first_frame(data: bytes) -> Any:
    with av.open(io.BytesIO(data), "r") as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def duration_s(data: bytes) -> float:
    with av.open(io.BytesIO(data), "r") as container:
        assert container.duration is not None
        return float(container.duration / av.time_base)


async def test_image_run_streams_progress_and_serves_the_png(stack: Stack) -> None:
    events = await generate(stack, load("image.json"), workflow_name="demo image")
    assert_well_formed(events)
    sequence = kinds(events)
    assert sequence[-1] == "completed", events[-1]
    assert "started" in sequence and "output_ready" in sequence
    started_nodes = [e.node_started for e in events if e.HasField("node_started")]
    assert [(n.node_id, n.class_type, n.title) for n in started_nodes] == [
        ("1", "EmptyImage", "Blank canvas"),
        ("2", "SimulatedSampler", "Sampler"),
        ("3", "SaveImage", "Save image"),
    ]
    steps = [(p.value, p.max) for e in events if e.HasField("node_progress") for p in [e.node_progress]]
    assert steps[-1] == (12, 12) and steps == sorted(steps)
    assert_coalesced(events, read_journal(stack.runs_dir, events[0].run_id))
    completed = events[-1].completed
    assert len(completed.outputs) == 1
    output = completed.outputs[0]
    assert (output.media_type, output.index, output.mime, output.node_id) == (pb.MEDIA_TYPE_IMAGE, 0, "image/png", "3")
    assert output.url.endswith(f"/api/media/image/{events[0].run_id}/0")
    pixels = decode_first_frame(await fetch_output(stack, output))
    assert pixels.shape == (512, 512, 3)
    assert tuple(pixels[0, 0]) == (0x33, 0x66, 0xCC)  # color 3368652 = #3366CC

    metadata = read_metadata(stack.runs_dir, events[0].run_id)
    assert metadata is not None
    assert metadata["status"] == "completed" and metadata["workflow"] == "demo image"
    assert metadata["prompt_id"] == events[0].accepted.prompt_id
    types = [(e["sequence"], e["type"], e["filename"]) for e in metadata["entities"]]
    assert types == [(1, "workflow", "01_workflow.json"), (2, "output_image", "02_output_image.png")]
    archived = json.loads((stack.runs_dir / events[0].run_id / "01_workflow.json").read_text())
    assert archived["3"]["inputs"]["filename_prefix"] == f"gensvc/{events[0].run_id}/3_image"
    on_disk = sorted(p.name for p in (stack.runs_dir / events[0].run_id).iterdir())
    assert on_disk == ["01_workflow.json", "02_output_image.png", "events.jsonl", "metadata.json"]  # no temp file
    entity = metadata["entities"][1]["metadata"]
    assert entity["sha256"] == output.sha256 and entity["node_id"] == "3" and entity["mime"] == "image/png"
    assert entity["subfolder"] == f"gensvc/{events[0].run_id}"


async def test_audio_run_stores_mp3_and_flac_in_node_order(stack: Stack) -> None:
    events = await generate(stack, example("audio.json"))
    assert_well_formed(events)
    assert kinds(events)[-1] == "completed"
    outputs = events[-1].completed.outputs
    assert [(o.media_type, o.index, o.mime, o.node_id) for o in outputs] == [
        (pb.MEDIA_TYPE_AUDIO, 0, "audio/mpeg", "2"),
        (pb.MEDIA_TYPE_AUDIO, 1, "audio/flac", "3"),
    ]
    assert [e.output_ready.output for e in events if e.HasField("output_ready")] == list(outputs)
    for output in outputs:
        assert duration_s(await fetch_output(stack, output)) == pytest.approx(3.0, abs=0.1)


async def test_video_run_stores_an_mp4_with_sound(stack: Stack) -> None:
    events = await generate(stack, load("video.json"))
    assert_well_formed(events)
    assert kinds(events)[-1] == "completed"
    (output,) = events[-1].completed.outputs
    assert (output.media_type, output.mime, output.filename) == (
        pb.MEDIA_TYPE_VIDEO,
        "video/mp4",
        "02_output_video.mp4",
    )
    data = await fetch_output(stack, output)
    with av.open(io.BytesIO(data), "r") as container:
        assert container.streams.video[0].codec_context.width == 128
        assert len(container.streams.audio) == 1
    assert tuple(decode_first_frame(data)[64, 64]) == pytest.approx((0xFF, 0x80, 0x00), abs=8)


async def test_concurrent_runs_never_exchange_outputs(stack: Stack) -> None:
    colors = [0xFF0000, 0x00FF00, 0x0000FF, 0xFFFF00]

    def workflow(color: int) -> dict[str, Any]:
        graph = load("image.json")
        graph["1"]["inputs"].update(color=color, width=64, height=64)
        graph["2"]["inputs"].update(steps=3, seconds=0.3)
        return graph

    results = await asyncio.gather(*(generate(stack, workflow(c)) for c in colors))
    assert len({r[0].run_id for r in results}) == len(colors)
    for color, events in zip(colors, results, strict=True):
        assert_well_formed(events)
        assert kinds(events)[-1] == "completed"
        (output,) = events[-1].completed.outputs
        assert events[0].run_id in output.url
        pixel = decode_first_frame(await fetch_output(stack, output))[0, 0]
        assert tuple(pixel) == ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)


async def test_identical_resubmission_writes_a_new_file(stack: Stack) -> None:
    first = await generate(stack, load("image.json"))
    second = await generate(stack, load("image.json"))
    assert kinds(first)[-1] == kinds(second)[-1] == "completed"
    assert "nodes_cached" in kinds(second)  # the blank canvas and sampler come from ComfyUI's cache
    a, b = first[-1].completed.outputs[0], second[-1].completed.outputs[0]
    assert a.url != b.url
    # Same pixels, but a file of its own (the PNG's embedded prompt names the second run's prefix).
    assert (decode_first_frame(await fetch_output(stack, a)) == decode_first_frame(await fetch_output(stack, b))).all()
    metadata = read_metadata(stack.runs_dir, second[0].run_id)
    assert metadata is not None
    assert metadata["entities"][1]["metadata"]["subfolder"] == f"gensvc/{second[0].run_id}"


async def expect_rpc_error(stack: Stack, graph: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    text = graph if isinstance(graph, str) else json.dumps(graph)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for reply in stack.stub.Generate(pb.GenerateRequest(spec=pb.RunSpec(workflow_json=text))):
            event = reply.event
            received.append(event)
    assert received == []
    assert info.value.code() == code
    return info.value


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    status = status_pb2.Status.FromString(details)
    assert status.code == error.code().value[0]
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return [v.field for v in bad.field_violations]


def output_files(runs_dir: Path) -> list[Path]:
    return [p for p in runs_dir.rglob("*") if "output" in p.name]


async def test_value_below_minimum_is_invalid_argument_naming_node_and_input(stack: Stack) -> None:
    graph = load("image.json")
    graph["1"]["inputs"]["width"] = 0
    error = await expect_rpc_error(stack, graph, grpc.StatusCode.INVALID_ARGUMENT)
    assert "node 1 (EmptyImage) input 'width'" in str(error.details())
    assert "value_smaller_than_min" in str(error.details())
    assert bad_request_fields(error) == ["workflow_json.1.inputs.width"]
    assert output_files(stack.runs_dir) == []
    (run_dir,) = stack.runs_dir.iterdir()
    metadata = read_metadata(stack.runs_dir, run_dir.name)
    assert metadata is not None and metadata["status"] == "failed"


async def test_unknown_node_class_is_invalid_argument(stack: Stack) -> None:
    graph = load("image.json")
    graph["1"]["class_type"] = "NoSuchNode"
    error = await expect_rpc_error(stack, graph, grpc.StatusCode.INVALID_ARGUMENT)
    assert "NoSuchNode" in str(error.details())


async def test_partly_valid_workflow_is_rejected_and_its_valid_half_cancelled(stack: Stack) -> None:
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}},  # images missing
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    error = await expect_rpc_error(stack, graph, grpc.StatusCode.INVALID_ARGUMENT)
    assert "node 2 (SaveImage) input 'images'" in str(error.details())
    assert output_files(stack.runs_dir) == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"1": {"inputs": {}}}', "class_type"),
        ('{"nodes": [], "links": []}', "Save (API)"),
    ],
)
async def test_malformed_workflow_is_invalid_argument_before_any_run(stack: Stack, text: str, fragment: str) -> None:
    error = await expect_rpc_error(stack, text, grpc.StatusCode.INVALID_ARGUMENT)
    assert fragment in str(error.details())
    assert list(stack.runs_dir.iterdir()) == []


async def test_execution_error_ends_with_failed_naming_the_node(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("image", b"this is not a wav file", filename="broken.wav", content_type="audio/wav")
        async with http.post(f"{stack.sim.comfy_url}/upload/image", data=form) as resp:
            assert resp.status == 200
            name = (await resp.json())["name"]
    graph = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": name}},
        "2": {"class_type": "SaveAudioMP3", "inputs": {"audio": ["1", 0], "filename_prefix": "x", "quality": "V0"}},
    }
    events = await generate(stack, graph)
    assert_well_formed(events)
    assert kinds(events)[-1] == "failed" and "output_ready" not in kinds(events)
    failed = events[-1].failed
    assert (failed.code, failed.node_id, failed.node_type) == (pb.FAILURE_CODE_EXECUTION_ERROR, "1", "LoadAudio")
    assert failed.exception_type == "av.error.InvalidDataError"
    assert failed.message
    assert output_files(stack.runs_dir) == []
    metadata = read_metadata(stack.runs_dir, events[0].run_id)
    assert metadata is not None and metadata["status"] == "failed"
    assert metadata["error"]["node_id"] == "1"
    response = await stack.http.get(f"/api/media/audio/{events[0].run_id}")
    assert response.status_code == 404


async def test_cancelling_the_call_interrupts_the_backend_prompt(stack: Stack) -> None:
    graph = load("image.json")
    graph["2"]["inputs"].update(steps=200, seconds=60)
    call = stack.stub.Generate(pb.GenerateRequest(spec=pb.RunSpec(workflow_json=json.dumps(graph))))
    run_id = ""
    async for reply in call:
        run_id = reply.event.run_id
        if reply.event.HasField("node_progress"):
            break
    handle = stack.service.runner.runs[run_id]
    assert handle.task is not None
    call.cancel()
    await asyncio.wait_for(handle.task, 10)
    metadata = read_metadata(stack.runs_dir, run_id)
    assert metadata is not None and metadata["status"] == "cancelled"
    events = [e async for e in handle.events()]
    assert isinstance(events[-1].body, Cancelled)
    assert events[-1].body.reason == "the client cancelled the Generate call"
    assert output_files(stack.runs_dir) == []
    # The backend confirms: the prompt ends interrupted, at the sampler's next step.
    prompt_id = metadata["prompt_id"]
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(10):
            while True:
                async with http.get(f"{stack.sim.comfy_url}/history/{prompt_id}") as resp:
                    history = await resp.json()
                if history:
                    break
                await asyncio.sleep(0.05)  # polling the backend's own record: it pushes nothing to us here
    messages = [m[0] for m in history[prompt_id]["status"]["messages"]]
    assert "execution_interrupted" in messages


async def test_through_swarm_proxy_pinned_to_a_backend(stack_factory: StackFactory) -> None:
    stack = await stack_factory(via_swarm=True, swarm_backend_id="0")
    events = await generate(stack, example("audio.json"))
    assert_well_formed(events)
    assert kinds(events)[-1] == "completed"
    assert events[0].accepted.backend.endswith("/ComfyBackendDirect")
    for output in events[-1].completed.outputs:
        await fetch_output(stack, output)


async def test_unknown_swarm_backend_id_is_unavailable(stack_factory: StackFactory) -> None:
    stack = await stack_factory(via_swarm=True, swarm_backend_id="7")
    error = await expect_rpc_error(stack, load("image.json"), grpc.StatusCode.UNAVAILABLE)
    assert "No ComfyUI backend available" in str(error.details())


async def test_unreachable_backend_is_unavailable(stack_factory: StackFactory) -> None:
    stack = await stack_factory(backend_url="http://127.0.0.1:9", request_timeout_seconds=2.0)
    error = await expect_rpc_error(stack, load("image.json"), grpc.StatusCode.UNAVAILABLE)
    assert "unreachable" in str(error.details())


async def test_run_completes_through_history_when_the_socket_drops(stack: Stack) -> None:
    graph = load("image.json")
    graph["2"]["inputs"].update(steps=10, seconds=1.0)
    stack.sim.faults.drop_socket_after_frames = 6  # mid-sampler: the rest of the run is never seen live
    events = await generate(stack, graph)
    assert_well_formed(events)
    assert kinds(events)[-1] == "completed"
    assert len([e for e in events if e.HasField("node_progress")]) < 10
    (output,) = events[-1].completed.outputs
    await fetch_output(stack, output)


async def test_run_fails_unavailable_when_history_keeps_failing_without_a_socket(stack_factory: StackFactory) -> None:
    stack = await stack_factory(backend_retries=1)
    runner = stack.service.runner
    runner.policy = dataclasses.replace(runner.policy, poll_failures_tolerated=3)
    graph = load("image.json")
    graph["2"]["inputs"].update(steps=10, seconds=0.5)
    stack.sim.faults.drop_socket_after_frames = 4
    stack.sim.faults.http_500_paths = {"/history"}
    events = await generate(stack, graph)
    assert_well_formed(events)
    assert events[-1].failed.code == pb.FAILURE_CODE_BACKEND_UNAVAILABLE
    assert "500" in events[-1].failed.message
    assert output_files(stack.runs_dir) == []


async def test_uploaded_input_feeds_a_load_node(stack: Stack) -> None:
    produced = await generate(stack, example("audio.json"))
    flac = await fetch_output(stack, produced[-1].completed.outputs[1])
    name = await next(iter(stack.service.runner.pool.members.values())).client.upload(
        flac, "tone.flac", subfolder="gensvc-inputs"
    )
    assert name == "gensvc-inputs/tone.flac"
    graph = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": name}},
        "2": {"class_type": "SaveAudioMP3", "inputs": {"audio": ["1", 0], "filename_prefix": "x", "quality": "V0"}},
    }
    events = await generate(stack, graph)
    assert kinds(events)[-1] == "completed"
    assert duration_s(await fetch_output(stack, events[-1].completed.outputs[0])) == pytest.approx(3.0, abs=0.1)
