"""Shipped templates end to end: Generate with a template and typed parameters through the real
service, which fills in the workflow, uploads input media and runs it on the simulator."""

from __future__ import annotations

import io
import json
from typing import Any

import av
import numpy as np
import pytest

from comfy_simulator.media import png_bytes
from comfygen.v1 import generation_pb2 as pb
from gateway_helpers import read_metadata
from generation_client.requests import param_value
from stack_helpers import Stack


async def run(stack: Stack, name: str, params: dict[str, Any]) -> tuple[dict[str, Any], list[pb.RunEvent]]:
    """Generate from a template; the run's metadata.json and its events."""
    request = pb.RunSpec(template=name, params={k: param_value(v) for k, v in params.items()})
    events = [reply.event async for reply in stack.stub.Generate(pb.GenerateRequest(spec=request))]
    assert events[-1].WhichOneof("kind") == "completed", events[-1]
    assert events[0].accepted.template == name
    metadata = read_metadata(stack.runs_dir, events[0].run_id)
    assert metadata is not None and metadata["template"] == name
    return metadata, events


async def only_output(stack: Stack, events: list[pb.RunEvent], media_type: int, mime: str) -> bytes:
    (output,) = events[-1].completed.outputs
    assert (output.media_type, output.mime) == (media_type, mime)
    response = await stack.http.get(output.url)
    assert response.status_code == 200
    return response.content


def frames(data: bytes) -> list[Any]:
    with av.open(io.BytesIO(data), "r") as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def duration_s(data: bytes) -> float:
    with av.open(io.BytesIO(data), "r") as container:
        assert container.duration is not None
        return float(container.duration / av.time_base)


def steps_of(events: list[pb.RunEvent], node: str) -> list[tuple[int, int]]:
    return [
        (e.node_progress.value, e.node_progress.max)
        for e in events
        if e.HasField("node_progress") and e.node_progress.node_id == node
    ]


async def test_weight_free_templates_and_a_run_reference(stack: Stack) -> None:
    _, image_run = await run(stack, "solid_image", {"width": "64", "height": 48, "color": 0xFF0000})
    (image,) = frames(await only_output(stack, image_run, pb.MEDIA_TYPE_IMAGE, "image/png"))
    assert image.shape == (48, 64, 3) and tuple(image[0, 0]) == (255, 0, 0)

    _, audio_run = await run(stack, "silent_audio", {"seconds": 1.5, "sample_rate": "22050"})
    mp3 = await only_output(stack, audio_run, pb.MEDIA_TYPE_AUDIO, "audio/mpeg")
    assert duration_s(mp3) == pytest.approx(1.5, abs=0.1)

    _, video_run = await run(stack, "solid_video", {"width": 64, "height": 32, "frames": 12, "fps": 12})
    video = await only_output(stack, video_run, pb.MEDIA_TYPE_VIDEO, "video/mp4")
    assert len(frames(video)) == 12 and duration_s(video) == pytest.approx(1.0, abs=0.05)

    # blur_image takes the first run's PNG by reference: resolved through run storage, uploaded, loaded.
    reference = f"run:{image_run[0].run_id}/image/0"
    metadata, blur_run = await run(stack, "blur_image", {"image": reference, "radius": 2})
    assert metadata["params"]["image"] == reference
    (blurred,) = frames(await only_output(stack, blur_run, pb.MEDIA_TYPE_IMAGE, "image/png"))
    assert blurred.shape == (48, 64, 3)


async def test_ace_step_music_of_twelve_seconds(stack: Stack) -> None:
    tags = 'lo-fi, "dusty" vinyl\nrain ☔, 80 bpm'
    metadata, events = await run(stack, "ace_step_instrumental", {"tags": tags, "seconds": "12", "steps": 4})
    mp3 = await only_output(stack, events, pb.MEDIA_TYPE_AUDIO, "audio/mpeg")
    assert duration_s(mp3) == pytest.approx(12.0, abs=0.1)
    assert steps_of(events, "52") == [(i, 4) for i in range(1, 5)]
    seed = events[0].accepted.seeds["seed"]  # "random" by default: drawn, reported, recorded
    assert metadata["params"]["seed"] == metadata["seeds"]["seed"] == seed
    record = json.loads((stack.runs_dir / events[0].run_id / "01_workflow.json").read_text())
    assert record["14"]["inputs"]["tags"] == tags and record["52"]["inputs"]["seed"] == seed


async def test_sd35_image_of_the_requested_size_and_seed(stack: Stack) -> None:
    params = {"prompt": "a red fox", "width": 768, "height": 512, "steps": 2}
    _, first = await run(stack, "sd35_text_to_image", {**params, "seed": 1})
    _, second = await run(stack, "sd35_text_to_image", {**params, "seed": 2})
    (a,) = frames(await only_output(stack, first, pb.MEDIA_TYPE_IMAGE, "image/png"))
    (b,) = frames(await only_output(stack, second, pb.MEDIA_TYPE_IMAGE, "image/png"))
    assert a.shape == b.shape == (512, 768, 3)
    assert not np.array_equal(a, b)  # the seed reaches the sampler


async def test_wan_video_lasts_frames_over_fps(stack: Stack) -> None:
    params = {"prompt": "waves", "width": 96, "height": 64, "frames": 25, "fps": 12, "steps": 2}
    _, events = await run(stack, "wan22_5b_text_to_video", params)
    video = await only_output(stack, events, pb.MEDIA_TYPE_VIDEO, "video/mp4")
    decoded = frames(video)
    assert len(decoded) == 25 and decoded[0].shape == (64, 96, 3)
    assert duration_s(video) == pytest.approx(25 / 12, abs=0.05)


async def test_img2img_with_an_uploaded_image(stack: Stack) -> None:
    source = np.zeros((40, 56, 3), np.uint8)
    source[...] = (10, 200, 30)
    params: dict[str, Any] = {"image": png_bytes(source), "prompt": "keep it", "denoise": 0.0, "steps": 2}
    _, events = await run(stack, "sd35_image_to_image", params)
    record = json.loads((stack.runs_dir / events[0].run_id / "01_workflow.json").read_text())
    loads = [n["inputs"]["image"] for n in record.values() if n["class_type"] == "LoadImage"]
    assert loads == [f"gensvc/{events[0].run_id}/image.png"]  # uploaded under a per-run name
    (kept,) = frames(await only_output(stack, events, pb.MEDIA_TYPE_IMAGE, "image/png"))
    assert kept.shape == (40, 56, 3) and tuple(kept[20, 28]) == (10, 200, 30)  # denoise 0 keeps the input
    _, events = await run(stack, "sd35_image_to_image", {**params, "denoise": 1.0})
    (repainted,) = frames(await only_output(stack, events, pb.MEDIA_TYPE_IMAGE, "image/png"))
    assert repainted.shape == (40, 56, 3) and tuple(repainted[20, 28]) != (10, 200, 30)


async def test_a_second_run_of_a_template_has_an_estimate_before_its_first_step(stack: Stack) -> None:
    _, first = await run(stack, "ace_step_instrumental", {"tags": "calm piano", "seconds": "4", "steps": 4})
    assert not next(e for e in first if e.HasField("started")).started.HasField("estimate")  # no basis yet
    # Other parameters, same template: the measured durations are the template's on this backend.
    _, second = await run(stack, "ace_step_instrumental", {"tags": "rainy evening", "seconds": "4", "steps": 4})
    started = next(e for e in second if e.HasField("started")).started
    assert started.estimate.basis == pb.ESTIMATE_BASIS_HISTORY
    first_step = next(i for i, e in enumerate(second) if e.HasField("node_progress"))
    assert next(i for i, e in enumerate(second) if e.HasField("started")) < first_step
