"""The simulator's binary frames against the real ComfyUI recordings: SaveImageWebsocket's images (type 1
without feature flags, type 4 after them) and the sampler previews of ``--preview-method``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from comfy_simulator import Simulator, SimulatorSettings, media, running
from simulator_helpers import BINARY, Client, binary_parts, recorded_sequence, tokens, transcript, workflow


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _client(session: aiohttp.ClientSession, sim: Simulator, metadata: bool) -> Client:
    c = Client(session, sim.comfy_url)
    url = sim.comfy_url.replace("http://", "ws://") + f"/ws?clientId={c.client_id}"
    c.ws = await session.ws_connect(url)
    if metadata:
        await c.ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    await c.until(lambda f: f["type"] == "status")
    if metadata:
        await c.until(lambda f: f["type"] == "feature_flags")
    return c


def _binary(frames: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any] | int, bytes]]:
    return [binary_parts(f["data"]["bytes"]) for f in frames if f["type"] == BINARY]


@pytest.mark.parametrize(("name", "metadata"), [("h_ws_binary", False), ("j_feature_flags", True)])
async def test_save_image_websocket_matches_recording(
    tmp_path: Path, session: aiohttp.ClientSession, name: str, metadata: bool
) -> None:
    async with running(SimulatorSettings(data_dir=tmp_path)) as sim:
        c = await _client(session, sim, metadata)
        answer, frames = await c.run(workflow("h_ws_binary_images"))
        # Status broadcasts interleave by timing; every other frame, binary ones included, comes in order.
        recorded = [t for t in recorded_sequence(name) if t[0] not in ("status", "feature_flags")]
        assert [t for t in tokens(frames) if t[0] != "status"] == recorded
        images = _binary(frames)
        expected = media.png_bytes(np.full((64, 64, 3), (0x11, 0x22, 0x33), np.uint8))
        assert [image for _, _, image in images] == [expected] * 3
        if metadata:
            first = next(f for f in transcript(name)["websockets"][0]["frames"] if f["kind"] == "binary")
            meta = images[0][1]
            assert isinstance(meta, dict)
            assert meta == {**first["metadata_json"], "prompt_id": answer["prompt_id"]}
            assert len(json.dumps(meta)) == first["metadata_length_be_u32"]  # ComfyUI's json.dumps spacing
        history = await c.get(f"/history/{answer['prompt_id']}")
        assert history[answer["prompt_id"]]["outputs"] == {}  # the images went only over the socket
        _, again = await c.run(workflow("h_ws_binary_images"))
        assert len(_binary(again)) == 3  # never cached (IS_CHANGED is the time)
        await c.close()


SAMPLER = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 1, "color": 255}},
    "2": {"class_type": "SimulatedSampler", "inputs": {"steps": 3, "seconds": 0.03, "images": ["1", 0]}},
    "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
}


@pytest.mark.parametrize("metadata", [False, True])
async def test_sampler_previews_follow_the_steps(
    tmp_path: Path, session: aiohttp.ClientSession, metadata: bool
) -> None:
    async with running(SimulatorSettings(data_dir=tmp_path, preview_method="latent2rgb")) as sim:
        c = await _client(session, sim, metadata)
        answer, frames = await c.run(SAMPLER)
        kinds = [f["type"] for f in frames if f["type"] in ("progress", BINARY)]
        # The order a real ComfyUI sends them in: type 4 before its progress frame, type 1 after it.
        assert kinds == (["<binary>", "progress"] if metadata else ["progress", "<binary>"]) * 3
        previews = _binary(frames)
        assert {event for event, _, _ in previews} == {4 if metadata else 1}
        for _, meta, image in previews:
            assert image[:2] == b"\xff\xd8"  # JPEG, 1/8 of the image each way (latent2rgb)
            assert media_size(image) == (12, 8)
            if metadata:
                assert isinstance(meta, dict)
                assert (meta["node_id"], meta["prompt_id"]) == ("2", answer["prompt_id"])
                assert meta["image_type"] == "image/jpeg"
            else:
                assert meta == 1  # JPEG
        assert len({image for _, _, image in previews}) == 3  # each step's preview differs
        await c.close()


async def test_no_previews_without_a_preview_method(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with running(SimulatorSettings(data_dir=tmp_path)) as sim:
        c = await _client(session, sim, True)
        _, frames = await c.run(SAMPLER)
        assert [f for f in frames if f["type"] == BINARY] == []
        assert len([f for f in frames if f["type"] == "progress"]) == 3
        await c.close()


def media_size(jpeg: bytes) -> tuple[int, int]:
    """Width and height from a JPEG's SOF0 segment."""
    i = 2
    while i < len(jpeg):
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if marker == 0xC0:
            return int.from_bytes(jpeg[i + 7 : i + 9], "big"), int.from_bytes(jpeg[i + 5 : i + 7], "big")
        i += 2 + length
    raise AssertionError("no SOF0 segment")
