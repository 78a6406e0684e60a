"""HTTP surface of the simulator (direct and through the SwarmUI proxy) and the media it writes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from comfy_simulator import Simulator, SimulatorSettings, running
from simulator_helpers import Client, transcript, workflow, write_tone

VOLATILE = {"date", "etag", "last-modified", "content-length", "content-range"}


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    write_tone(tmp_path / "input" / "test_tone_speech.wav")
    (tmp_path / "input" / "broken_audio.wav").write_text("not audio")
    async with running(SimulatorSettings(data_dir=tmp_path, backend_ids=(0, 3))) as simulator:
        yield simulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def connect(session: aiohttp.ClientSession, base: str) -> Client:
    return await Client(session, base).connect()


def header_names(headers: Any) -> set[str]:
    return {h.lower() for h in headers if h.lower() not in VOLATILE}


async def test_view_direct_matches_recording_and_proxy_strips(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await connect(session, sim.comfy_url)
    answer, _ = await c.run(workflow("a_image"))
    outputs = (await c.get(f"/history/{answer['prompt_id']}"))[answer["prompt_id"]]["outputs"]
    recorded_views = {v["item"]["type"]: v for v in transcript("a_image")["steps"]["run"]["view"]}
    for entry in (outputs["2"]["images"][0], outputs["3"]["images"][0]):
        rec = recorded_views[entry["type"]]
        query = f"/view?filename={entry['filename']}&subfolder={entry['subfolder']}&type={entry['type']}"
        async with session.get(sim.comfy_url + query) as resp:
            body = await resp.read()
            assert resp.status == 200
            assert header_names(resp.headers) == header_names(rec["get"]["response"]["headers"])
            assert resp.headers["Content-Disposition"] == f'filename="{entry["filename"]}"'
            assert resp.headers["Content-Type"] == "image/png" and int(resp.headers["Content-Length"]) == len(body)
            assert body[:8] == bytes.fromhex(rec["get"]["response"]["body_first16_hex"])[:8]
        async with session.head(sim.comfy_url + query) as resp:
            assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(body)
            assert await resp.read() == b""
        async with session.get(sim.comfy_url + query, headers={"Range": "bytes=0-15"}) as resp:
            assert resp.status == 206 and await resp.read() == body[:16]
            assert resp.headers["Content-Range"] == f"bytes 0-15/{len(body)}"
            assert header_names(resp.headers) == header_names(rec["get_range_0_15"]["response"]["headers"])
        async with session.get(sim.comfy_url + query, headers={"Range": "bytes=-100"}) as resp:
            assert resp.status == 206 and await resp.read() == body[-100:]
        proxied = sim.swarm_url + query
        async with session.get(proxied, headers={"Range": "bytes=0-15", "If-Range": "x"}) as resp:
            assert resp.status == 200 and await resp.read() == body
            assert resp.headers["Content-Type"] == "image/png"
            for header in ("Accept-Ranges", "ETag", "Last-Modified", "Content-Disposition"):
                assert header not in resp.headers
    missing = transcript("m_misc")["steps"]
    for label in ("GET /view missing file", "GET /view path traversal"):
        step = missing[label]
        async with session.get(sim.comfy_url + step["request"]["path"]) as resp:
            assert resp.status == step["response"]["status"]
            assert await resp.read() == b"" and "Content-Type" not in resp.headers
    async with session.get(sim.comfy_url + "/view?filename=x.png&type=bogus") as resp:
        assert resp.status == 400
    await c.close()


async def test_media_files_decode_and_content_types(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await connect(session, sim.comfy_url)
    snd = {"audio": ["3", 0], "filename_prefix": "run1/snd"}
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 8, "color": 0xFF0000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "run1/img"}},
        "3": {"class_type": "EmptyAudio", "inputs": {"duration": 0.5, "sample_rate": 48000, "channels": 1}},
        "4": {"class_type": "SaveAudioMP3", "inputs": {**snd, "quality": "128k"}},
        "5": {"class_type": "SaveAudio", "inputs": dict(snd)},
        "6": {"class_type": "SaveAudioOpus", "inputs": {**snd, "quality": "64k"}},
        "7": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0, "audio": ["3", 0]}},
        "8": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["7", 0], "filename_prefix": "run1/vid", "format": "auto", "codec": "auto"},
        },
        "9": {
            "class_type": "SaveWEBM",
            "inputs": {"images": ["1", 0], "filename_prefix": "run1/webm", "codec": "vp9", "fps": 8.0, "crf": 32.0},
        },
    }
    answer, _ = await c.run(prompt)
    outputs = (await c.get(f"/history/{answer['prompt_id']}"))[answer["prompt_id"]]["outputs"]
    assert [e["filename"] for e in outputs["2"]["images"]] == [f"img_{i:05}_.png" for i in range(1, 9)]
    assert outputs["8"]["animated"] == [True] and outputs["9"]["animated"] == [True]
    recorded_types = {"png": "image/png", "mp3": "audio/mpeg", "flac": "audio/flac", "opus": "audio/ogg"}
    recorded_types |= {"mp4": "video/mp4", "webm": "video/webm"}
    out_dir = sim.settings.output_dir / "run1"
    for node in outputs.values():
        for entry in node.get("images", []) + node.get("audio", []):
            assert entry["subfolder"] == "run1" and entry["type"] == "output"
            query = f"/view?filename={entry['filename']}&subfolder=run1&type=output"
            async with session.get(sim.comfy_url + query) as resp:
                assert resp.headers["Content-Type"] == recorded_types[entry["filename"].rsplit(".", 1)[1]]
    with av.open(str(out_dir / "img_00001_.png")) as container:
        pixels = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert pixels.shape == (48, 64, 3) and np.all(pixels == [255, 0, 0])
    for name, rate in (("snd_*_.mp3", 48000), ("snd_*_.flac", 48000), ("snd_*_.opus", 48000)):
        path = next(out_dir.glob(name))
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            assert stream.codec_context.sample_rate == rate and stream.channels == 1
            samples = sum(f.samples for f in container.decode(stream))
        assert abs(samples / rate - 0.5) < 0.06, path.name
    with av.open(str(next(out_dir.glob("vid_*_.mp4")))) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 64, 48)
        assert video.codec_context.pix_fmt == "yuv420p" and audio.codec_context.name == "aac"
        assert sum(1 for _ in container.decode(video)) == 8
    with av.open(str(next(out_dir.glob("webm_*_.webm")))) as container:
        assert container.streams.video[0].codec_context.name == "vp9" and not container.streams.audio
    await c.close()


async def test_prefix_outside_output_is_an_execution_error(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await connect(session, sim.comfy_url)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "../../escape"}},
    }
    _, frames = await c.run(prompt)
    error = next(f["data"] for f in frames if f["type"] == "execution_error")
    assert error["node_id"] == "2" and "outside the output folder" in error["exception_message"]
    await c.close()


async def test_upload_renaming_and_load_from_subfolder(sim: Simulator, session: aiohttp.ClientSession) -> None:
    steps = transcript("l_upload")["steps"]
    tone = sim.settings.data_dir / "tone.wav"
    write_tone(tone, seconds=0.25)
    other = tone.read_bytes()[:-4] + b"\x01\x02\x03\x04"

    async def upload(data: bytes, overwrite: bool) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("image", data, filename="uploaded_tone.wav", content_type="audio/wav")
        form.add_field("type", "input")
        form.add_field("subfolder", "transcript_uploads")
        if overwrite:
            form.add_field("overwrite", "true")
        async with session.post(sim.comfy_url + "/upload/image", data=form) as resp:
            assert resp.status == 200
            return dict(await resp.json())

    assert await upload(tone.read_bytes(), True) == steps["upload_1_overwrite_true"]["response"]["body"]
    assert await upload(tone.read_bytes(), False) == steps["upload_2_same_bytes_no_overwrite"]["response"]["body"]
    assert await upload(other, False) == steps["upload_3_other_bytes_no_overwrite"]["response"]["body"]
    assert sorted(p.name for p in (sim.settings.input_dir / "transcript_uploads").iterdir()) == [
        "uploaded_tone (1).wav",
        "uploaded_tone.wav",
    ]
    c = await connect(session, sim.comfy_url)
    info = await c.get("/object_info/LoadAudio")
    recorded = steps["object_info_LoadAudio_after_upload"]["response"]["body"]
    assert info == recorded  # lists only top-level input files
    answer, frames = await c.run(workflow("l_upload_then_load_audio"))
    assert any(f["type"] == "execution_success" for f in frames)
    outputs = (await c.get(f"/history/{answer['prompt_id']}"))[answer["prompt_id"]]["outputs"]
    assert (
        outputs
        == next(iter(transcript("m_misc")["steps"]["GET /history?max_items=1"]["response"]["body"].values()))["outputs"]
    )
    await c.close()


async def test_misc_endpoints_match_recording(sim: Simulator, session: aiohttp.ClientSession) -> None:
    steps = transcript("m_misc")["steps"]
    for label in ("GET /object_info/SaveAudioMP3", "GET /object_info/SaveVideo", "GET /features", "GET /prompt"):
        for base in (sim.comfy_url, sim.comfy_url + "/api", sim.swarm_url):
            async with session.get(base + steps[label]["request"]["path"]) as resp:
                assert resp.status == 200 and await resp.json() == steps[label]["response"]["body"], (label, base)
    async with session.get(sim.comfy_url + "/system_stats") as resp:
        stats = await resp.json()
    recorded = steps["GET /system_stats"]["response"]["body"]
    assert list(stats["system"]) == list(recorded["system"])
    assert [list(d) for d in stats["devices"]] == [list(d) for d in recorded["devices"]]
    assert stats["system"]["comfyui_version"] == "0.3.64" and stats["devices"][0]["type"] == "cpu"
    async with session.get(sim.comfy_url + "/object_info") as resp:
        everything = await resp.json()
    assert {"EmptyImage", "LoadImage", "SaveWEBM", "CreateVideo", "SimulatedSampler"} <= set(everything)
    assert everything["SimulatedSampler"]["category"] == "simulator"
    async with session.post(sim.comfy_url + "/free", json={"unload_models": True, "free_memory": True}) as resp:
        assert resp.status == 200 and await resp.read() == b""
    async with session.get(sim.comfy_url + "/history/unknown-id") as resp:
        assert await resp.json() == {}


async def test_history_post_delete_and_clear(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await connect(session, sim.comfy_url)
    first, _ = await c.run(workflow("a_image"))
    second, _ = await c.run(workflow("e_exec_error"))
    assert list(await c.get("/history")) == [first["prompt_id"], second["prompt_id"]]
    assert list(await c.get("/history?max_items=1&offset=0")) == [first["prompt_id"]]
    assert await c.post("/history", {"delete": [first["prompt_id"]]}) == (200, None)
    assert list(await c.get("/history")) == [second["prompt_id"]]
    assert await c.post("/history", {"clear": True}) == (200, None)
    assert await c.get("/history") == {}
    await c.close()


async def test_origin_check_direct_and_through_proxy(sim: Simulator, session: aiohttp.ClientSession) -> None:
    evil = {"Origin": "http://evil.example"}
    async with session.get(sim.comfy_url + "/queue", headers=evil) as resp:
        assert resp.status == 403 and await resp.read() == b""
    async with session.get(sim.comfy_url + "/queue", headers={"Origin": sim.comfy_url}) as resp:
        assert resp.status == 200
    async with session.get(sim.swarm_url + "/queue", headers=evil) as resp:
        assert resp.status == 200 and await resp.json() == {"queue_running": [], "queue_pending": []}


async def test_proxy_backend_ids_interrupt_and_run(sim: Simulator, session: aiohttp.ClientSession) -> None:
    for backend in ("0", "3"):
        async with session.get(sim.swarm_url + "/prompt", headers={"X-Swarm-Backend-ID": backend}) as resp:
            assert resp.status == 200
    async with session.get(sim.swarm_url + "/prompt", headers={"X-Swarm-Backend-ID": "7"}) as resp:
        assert resp.status == 400 and resp.content_type == "text/html"
        assert "No ComfyUI backend available, loading failed." in await resp.text()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(
            sim.swarm_url.replace("http", "ws") + "/ws?clientId=x", headers={"X-Swarm-Backend-ID": "7"}
        )
    assert info.value.status == 400
    async with session.get(sim.comfy_url.replace("/", "/", 1) + "/comfybackenddirect/prompt") as resp:
        assert resp.status == 404  # the route is case-sensitive
    c = await Client(session, sim.swarm_url).connect(headers={"X-Swarm-Backend-ID": "3"})
    async with session.post(sim.swarm_url + "/interrupt", json={}) as resp:
        assert resp.status == 500  # Swarm's PromptIdMap.TryGetValue(null) with a proxied socket open
    async with session.post(sim.swarm_url + "/interrupt", json={"prompt_id": "nope"}) as resp:
        assert resp.status == 200 and await resp.read() == b""
    answer, frames = await c.run(workflow("a_image"))
    assert [f["data"]["node"] for f in frames if f["type"] == "executing"] == ["1", "3", "2", None]
    history = await c.get(f"/history/{answer['prompt_id']}")
    assert history[answer["prompt_id"]]["status"]["completed"] is True
    async with session.post(sim.swarm_url + "/prompt", data=b"not json") as resp:
        assert resp.status == 500
    await c.close()
