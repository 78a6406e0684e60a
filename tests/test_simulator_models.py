"""Simulated model nodes (ACE-Step, SD3.5, Wan 2.2 layouts): object_info, validation, progress, interrupts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from comfy_simulator import Simulator, SimulatorSettings, running
from comfy_simulator.media import encode_mp4
from generation_service.settings import SHIPPED_TEMPLATES_DIR
from simulator_helpers import Client


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with running(SimulatorSettings(data_dir=tmp_path, model_step_seconds=0.02)) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        c = await Client(session, sim.comfy_url).connect()
        yield c
        await c.close()


def shipped(name: str) -> dict[str, Any]:
    graph: dict[str, Any] = json.loads((SHIPPED_TEMPLATES_DIR / f"{name}.workflow.json").read_text())
    return graph


async def test_object_info_lists_model_nodes_and_files(client: Client) -> None:
    info = await client.get("/object_info")
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [
        "ace_step_v1_3.5b.safetensors",
        "sd3.5_large.safetensors",
        "sd3.5_large_turbo.safetensors",
        "sd3.5_medium.safetensors",
    ]
    ksampler = info["KSampler"]["input"]["required"]
    assert list(ksampler) == [
        "model",
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "positive",
        "negative",
        "latent_image",
        "denoise",
    ]
    assert ksampler["seed"][1]["max"] == 0xFFFFFFFFFFFFFFFF and "uni_pc" in ksampler["sampler_name"][0]
    assert info["Wan22ImageToVideoLatent"]["input"]["optional"] == {"start_image": ["IMAGE", {}]}
    assert info["LoadVideo"]["input"]["required"]["file"][0] == "COMBO"


async def test_model_inputs_are_validated_like_comfyui(client: Client) -> None:
    graph = shipped("wan22_5b_text_to_video")
    graph["37"]["inputs"]["unet_name"] = "missing.safetensors"
    graph["3"]["inputs"].update(steps=0, sampler_name="fastest")
    graph["55"]["inputs"]["width"] = 16
    status, body = await client.post("/prompt", {"prompt": graph, "client_id": client.client_id})
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    found = {(n, e["type"], e["extra_info"]["input_name"]) for n, v in body["node_errors"].items() for e in v["errors"]}
    assert found == {
        ("37", "value_not_in_list", "unet_name"),
        ("3", "value_smaller_than_min", "steps"),
        ("3", "value_not_in_list", "sampler_name"),
        ("55", "value_smaller_than_min", "width"),
    }


async def test_ksampler_reports_steps_and_stops_between_them(client: Client) -> None:
    graph = shipped("sd35_text_to_image")
    graph["135"]["inputs"].update(width=64, height=64)
    graph["3"]["inputs"]["steps"] = 3
    _, frames = await client.run(graph)
    progress = [(f["data"]["node"], f["data"]["value"], f["data"]["max"]) for f in frames if f["type"] == "progress"]
    assert progress == [("3", 1, 3), ("3", 2, 3), ("3", 3, 3)]
    graph["3"]["inputs"]["steps"] = 10000
    answer = await client.submit(graph)
    await client.until(lambda f: f["type"] == "progress" and f["data"]["value"] == 2)
    assert await client.post("/interrupt", {"prompt_id": answer["prompt_id"]}) == (200, None)
    frames = await client.wait_done(answer["prompt_id"])
    interrupted = next(f["data"] for f in frames if f["type"] == "execution_interrupted")
    assert (interrupted["node_id"], interrupted["node_type"]) == ("3", "KSampler")
    steps = [
        f["data"]["value"]
        for f in client.frames
        if f["type"] == "progress" and f["data"]["prompt_id"] == answer["prompt_id"]
    ]
    assert 2 <= steps[-1] < 10  # stopped at the next step, not at the end


async def test_a_model_cannot_sample_another_kind_of_latent(client: Client) -> None:
    graph = shipped("sd35_text_to_image")
    graph["4"]["inputs"]["ckpt_name"] = "ace_step_v1_3.5b.safetensors"
    graph["135"]["inputs"].update(width=64, height=64)
    graph["3"]["inputs"]["steps"] = 1
    _, frames = await client.run(graph)
    error = next(f["data"] for f in frames if f["type"] == "execution_error")
    assert (error["node_id"], error["exception_type"]) == ("3", "RuntimeError")
    assert "cannot sample a image latent" in error["exception_message"]


async def test_ace_step_audio_follows_its_inputs(sim: Simulator, client: Client) -> None:
    graph = shipped("ace_step_instrumental")
    graph["17"]["inputs"]["seconds"] = 2.0
    graph["52"]["inputs"]["steps"] = 1

    async def tone(seed: int) -> Any:
        graph["52"]["inputs"]["seed"] = seed
        answer, _ = await client.run(graph)
        history = await client.get(f"/history/{answer['prompt_id']}")
        (item,) = history[answer["prompt_id"]]["outputs"]["59"]["audio"]
        path = sim.settings.output_dir / item["subfolder"] / item["filename"]
        with av.open(str(path), "r") as container:
            samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
            assert container.duration is not None
            assert container.duration / av.time_base == pytest.approx(2.0, abs=0.1)
        return np.abs(np.fft.rfft(samples[:44100])).argmax()

    assert await tone(1) != await tone(2)  # the seed changes the pitch


async def test_load_video_reads_an_input_video(sim: Simulator, client: Client) -> None:
    sim.settings.input_dir.mkdir(parents=True, exist_ok=True)
    images = np.full((6, 32, 48, 3), 0.5, np.float32)
    encode_mp4(str(sim.settings.input_dir / "clip.mp4"), images, 6.0, None, None)
    graph: dict[str, Any] = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"}},
        "2": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["1", 0], "filename_prefix": "copy", "format": "auto", "codec": "auto"},
        },
    }
    answer, _ = await client.run(graph)
    (item,) = (await client.get(f"/history/{answer['prompt_id']}"))[answer["prompt_id"]]["outputs"]["2"]["images"]
    with av.open(str(sim.settings.output_dir / item["filename"]), "r") as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == (32, 48, 3)
    graph["1"]["inputs"]["file"] = "nothing.mp4"
    status, body = await client.post("/prompt", {"prompt": graph, "client_id": client.client_id})
    assert (
        status == 400 and body["node_errors"]["1"]["errors"][0]["details"] == "file - Invalid video file: nothing.mp4"
    )
