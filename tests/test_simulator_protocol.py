"""The simulator against the real ComfyUI 0.3.64 recordings: websocket frame sequences, history, queue."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfy_simulator import Simulator, SimulatorSettings, running
from simulator_helpers import Client, recorded_frames, split_status, tokens, transcript, workflow, write_tone

# Slow chains: the recorded ones blur 1024²×8; here 128²×2 with a per-megapixel delay, so each blur takes
# about 0.3 s: long enough to hit mid-chain, short enough for the suite.
SLOW_BLUR = 10.0


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    write_tone(tmp_path / "input" / "test_tone_speech.wav")
    (tmp_path / "input" / "broken_audio.wav").write_text("this is not a wav file\n")
    settings = SimulatorSettings(data_dir=tmp_path, blur_seconds_per_megapixel=SLOW_BLUR, temp_letters="pjniz")
    async with running(settings) as simulator:
        yield simulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def client(session: aiohttp.ClientSession, base: str, client_id: str | None = None) -> Client:
    return await Client(session, base, client_id).connect()


def small_slow(name: str) -> dict[str, Any]:
    prompt = workflow(name)
    for node in prompt.values():
        if node["class_type"] == "EmptyImage":
            node["inputs"].update(width=128, height=128, batch_size=2)
    return prompt


async def test_image_then_cached_match_recording(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await client(session, sim.comfy_url)
    answer, frames = await c.run(workflow("a_image"))
    assert answer["number"] == 0 and answer["node_errors"] == {}
    assert tokens(frames) == tokens(recorded_frames("a_image")[1:])
    assert [f["data"]["node"] for f in frames if f["type"] == "executing"] == ["1", "3", "2", None]
    history = (await c.get(f"/history/{answer['prompt_id']}"))[answer["prompt_id"]]
    recorded = next(iter(transcript("a_image")["steps"]["run"]["history"]["response"]["body"].values()))
    assert list(history) == list(recorded) == ["prompt", "outputs", "status", "meta"]
    assert history["prompt"][2] == recorded["prompt"][2]
    assert history["prompt"][3] == {"client_id": c.client_id}
    assert history["prompt"][4] == recorded["prompt"][4] == ["3", "2"]
    assert history["outputs"] == recorded["outputs"]  # same names: same counter, same temp letters
    assert history["meta"] == recorded["meta"]
    assert [m[0] for m in history["status"]["messages"]] == [m[0] for m in recorded["status"]["messages"]]

    answer2, frames2 = await c.run(workflow("a_image"))
    assert tokens(frames2) == tokens(recorded_frames("a2_image_cached")[1:])
    executed = [f["data"]["output"] for f in frames2 if f["type"] == "executed"]
    assert executed == [recorded["outputs"]["3"], recorded["outputs"]["2"]]  # the OLD file entries
    assert sorted(p.name for p in (sim.settings.output_dir / "transcript").iterdir()) == ["image_00001_.png"]
    await c.close()


async def test_audio_and_video_match_recording(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await client(session, sim.comfy_url)
    answer, frames = await c.run(workflow("b_audio"))
    assert tokens(frames) == tokens(recorded_frames("b_audio")[1:])
    outputs = (await c.get(f"/history/{answer['prompt_id']}"))[answer["prompt_id"]]["outputs"]
    names = [entry["filename"] for out in outputs.values() for entry in out["audio"]]
    assert sorted(n.rsplit(".", 1)[1] for n in names) == ["flac", "mp3", "opus"]
    assert sorted(n.rsplit(".", 1)[0] for n in names) == ["audio_00001_", "audio_00002_", "audio_00003_"]  # one counter

    _, frames = await c.run(workflow("c_video"))
    assert tokens(frames) == tokens(recorded_frames("c_video")[1:])  # LoadAudio cached from the audio run
    cached = next(f for f in frames if f["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["4"]
    order = [f["data"]["node"] for f in frames if f["type"] == "executing"]
    recorded_order = [f["data"]["node"] for f in recorded_frames("c_video") if f["type"] == "executing"]
    assert order == recorded_order == ["2", "1", "3", "7", "5", "6", None]
    await c.close()


async def test_execution_error_matches_recording(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await client(session, sim.comfy_url)
    answer, frames = await c.run(workflow("e_exec_error"))
    assert tokens(frames) == tokens(recorded_frames("e_exec_error")[1:])
    error = next(f["data"] for f in frames if f["type"] == "execution_error")
    recorded = next(f["data"] for f in recorded_frames("e_exec_error") if f["type"] == "execution_error")
    assert list(error) == list(recorded)
    for key in ("node_id", "node_type", "executed", "exception_type", "current_inputs", "current_outputs"):
        assert error[key] == recorded[key], key
    assert error["exception_message"].startswith("[Errno 1094995529] Invalid data found when processing input:")
    assert all(isinstance(line, str) for line in error["traceback"])
    history = (await c.get(f"/history/{answer['prompt_id']}"))[answer["prompt_id"]]
    assert history["status"]["status_str"] == "error" and history["status"]["completed"] is False
    assert history["outputs"] == {} and history["meta"] == {}
    assert history["status"]["messages"][-1][0] == "execution_error"
    await c.close()


@pytest.mark.parametrize("targeted", [False, True])
async def test_interrupt_matches_recording(sim: Simulator, session: aiohttp.ClientSession, targeted: bool) -> None:
    name = "f2_interrupt_targeted" if targeted else "f_interrupt"
    c = await client(session, sim.comfy_url)
    start = len(c.frames)
    answer = await c.submit(small_slow("f_interrupt_slow_targeted" if targeted else "f_interrupt_slow_global"))
    await c.until(lambda f: f["type"] == "executing" and f["data"]["node"] == "11")
    queue = await c.get("/queue")
    assert [item[1] for item in queue["queue_running"]] == [answer["prompt_id"]]
    if targeted:
        status, body = await c.post("/interrupt", {"prompt_id": "some-other-prompt"})
        assert (status, body) == (200, None)
    status, body = await c.post("/interrupt", {"prompt_id": answer["prompt_id"]} if targeted else {})
    assert (status, body) == (200, None)
    await c.wait_done(answer["prompt_id"])
    frames = c.frames[start:]
    assert tokens(frames) == tokens(recorded_frames(name)[1:])
    interrupted = next(f["data"] for f in frames if f["type"] == "execution_interrupted")
    recorded = next(f["data"] for f in recorded_frames(name) if f["type"] == "execution_interrupted")
    assert list(interrupted) == list(recorded)
    assert (interrupted["node_id"], interrupted["node_type"]) == ("12", "ImageBlur")
    assert sorted(interrupted["executed"]) == sorted(recorded["executed"])
    history = (await c.get(f"/history/{answer['prompt_id']}"))[answer["prompt_id"]]
    assert history["status"]["status_str"] == "error" and history["outputs"] == {}
    assert (await c.get("/queue")) == {"queue_running": [], "queue_pending": []}
    await c.close()


async def test_concurrent_clients_match_recording(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c1, c2 = await client(session, sim.comfy_url), await client(session, sim.comfy_url)
    a, b = await asyncio.gather(c1.submit(small_slow("g_concurrent_a")), c2.submit(small_slow("g_concurrent_b")))
    assert {a["number"], b["number"]} == {0, 1}
    first, second = (c1, c2) if a["number"] < b["number"] else (c2, c1)
    snapshot = await first.get("/queue")
    assert len(snapshot["queue_running"]) + len(snapshot["queue_pending"]) == 2
    await first.wait_done(a["prompt_id"] if first is c1 else b["prompt_id"])
    await second.wait_done(b["prompt_id"] if second is c2 else a["prompt_id"])
    await first.until(lambda f: f["type"] == "status" and f["data"]["status"]["exec_info"]["queue_remaining"] == 0)
    for mine, label in ((c1, "client_1"), (c2, "client_2")):
        recorded = recorded_frames("g_concurrent", label)[1:]
        ours, statuses = split_status(mine.frames[1:])
        rec_ours, rec_statuses = split_status(recorded)
        assert ours == rec_ours  # execution events only for the socket's own prompt
        assert len(statuses) == len(rec_statuses) == 6 and max(statuses) == 2
        if mine is second:  # the second prompt's owner sees every status before its prompt starts
            assert mine.frames[-1]["data"]["node"] is None
    own_ids = {f["data"].get("prompt_id") for f in c1.frames if f["type"] != "status"}
    assert own_ids == {a["prompt_id"]}
    await c1.close()
    await c2.close()


async def test_queue_delete_and_client_prompt_id(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await client(session, sim.comfy_url)
    start = len(c.frames)
    a = await c.submit(small_slow("k_queue_delete_a"))
    await c.until(lambda f: f["type"] == "executing" and f["data"]["node"] == "10")
    recorded_b = transcript("k_queue_delete")["steps"]["post_B"]["request"]["body"]
    b = await c.submit(recorded_b["prompt"], prompt_id="my-own-id-0001")
    assert b == {"prompt_id": "my-own-id-0001", "number": 1, "node_errors": {}}
    queue = await c.get("/queue")
    assert [i[1] for i in queue["queue_running"]] == [a["prompt_id"]]
    assert [i[1] for i in queue["queue_pending"]] == ["my-own-id-0001"]
    pending = queue["queue_pending"][0]
    recorded_pending = transcript("k_queue_delete")["steps"]["queue_both"]["response"]["body"]["queue_pending"][0]
    assert len(pending) == 5 and pending[3] == {"client_id": c.client_id}
    assert pending[2] == recorded_pending[2] and sorted(pending[4]) == sorted(recorded_pending[4])
    async with session.post(sim.comfy_url + "/queue", json={"delete": ["my-own-id-0001"]}) as resp:
        assert resp.status == 200 and await resp.read() == b"" and "Content-Type" not in resp.headers
    assert (await c.get("/queue"))["queue_pending"] == []
    await c.wait_done(a["prompt_id"])
    ours, statuses = split_status(c.frames[start:])
    rec_ours, rec_statuses = split_status(recorded_frames("k_queue_delete")[1:])
    assert ours == rec_ours
    assert statuses == rec_statuses == [1, 1, 2, 1, 1, 0]
    assert await c.get("/history/my-own-id-0001") == {}
    last = await c.get("/history?max_items=1")
    assert list(last) == [a["prompt_id"]]
    await c.close()


async def test_node_errors_match_recording(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await client(session, sim.comfy_url)
    steps = transcript("d_node_errors")["steps"]

    def normalise(body: Any) -> Any:
        body = copy.deepcopy(body)
        for node in (body.get("node_errors") or {}).values():
            node["dependent_outputs"] = sorted(node["dependent_outputs"])
            for err in node["errors"]:
                if "traceback" in err["extra_info"]:
                    assert all(isinstance(line, str) for line in err["extra_info"]["traceback"])
                    err["extra_info"]["traceback"] = "<traceback>"
        body.pop("prompt_id", None)
        body.pop("number", None)
        return body

    for label, step in steps.items():
        if label == "body_not_json":
            continue
        request, response = step["post_prompt"]["request"]["body"], step["post_prompt"]["response"]
        request = {**request, "client_id": c.client_id}
        async with session.post(sim.comfy_url + "/prompt", json=request) as resp:
            body = await resp.json()
            assert resp.status == response["status"], label
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert normalise(body) == normalise(response["body"]), label
        if resp.status == 200:
            frames = await c.wait_done(body["prompt_id"])
            history = (await c.get(f"/history/{body['prompt_id']}"))[body["prompt_id"]]
            recorded_history = next(iter(step["history"]["response"]["body"].values()))
            assert history["prompt"][4] == recorded_history["prompt"][4] == ["3"]  # only the valid output ran
            assert list(history["outputs"]) == ["3"]
            assert any(f["type"] == "execution_success" for f in frames)
    async with session.post(sim.comfy_url + "/prompt", data=b"{not json") as resp:
        recorded = steps["body_not_json"]
        assert resp.status == 500
        assert resp.headers["Content-Type"] == recorded["headers"]["Content-Type"]
        assert await resp.text() == recorded["body_text"]
    await c.close()


async def test_reconnect_with_same_client_id_orphans_the_new_socket(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    cid = "42f46c9d-615e-48af-9485-faf92622b3dd"
    first = await client(session, sim.comfy_url, cid)
    second = await client(session, sim.comfy_url, cid)
    watcher = await client(session, sim.comfy_url)
    await first.close()
    answer = await second.submit(workflow("a_image"))
    await watcher.until(lambda f: f["type"] == "status" and f["data"]["status"]["exec_info"]["queue_remaining"] == 0)
    assert (await second.get(f"/history/{answer['prompt_id']}"))[answer["prompt_id"]]["status"]["completed"]
    with pytest.raises(TimeoutError):
        await second.next_frame(timeout=0.2)  # nothing at all, not even the status broadcasts
    await second.close()
    third = await client(session, sim.comfy_url, cid)  # control: the old socket is gone first
    _, frames = await third.run(workflow("a_image"))
    assert frames[-1]["data"]["node"] is None
    await third.close()
    await watcher.close()


async def test_feature_flags_reply(sim: Simulator, session: aiohttp.ClientSession) -> None:
    ws = await session.ws_connect(sim.comfy_url.replace("http", "ws") + "/ws?clientId=ff")
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    frames = [await ws.receive_json(timeout=5), await ws.receive_json(timeout=5)]
    recorded = recorded_frames("j_feature_flags")[:2]
    assert [f["type"] for f in frames] == [f["type"] for f in recorded] == ["status", "feature_flags"]
    assert frames[1] == recorded[1]
    async with session.get(sim.comfy_url + "/features") as resp:
        assert await resp.json() == recorded[1]["data"]
    await ws.close()


async def test_simulated_sampler_progress_and_interrupt(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await client(session, sim.comfy_url)
    prompt: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 255}},
        "2": {"class_type": "SimulatedSampler", "inputs": {"steps": 4, "seconds": 0.04, "images": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    _, frames = await c.run(prompt)
    progress = [f["data"] for f in frames if f["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(i, 4, "2") for i in range(1, 5)]
    states = [
        f["data"]["nodes"]["2"] for f in frames if f["type"] == "progress_state" and list(f["data"]["nodes"])[-1] == "2"
    ]
    assert [(s["state"], s["value"]) for s in states] == [("running", 0.0)] + [("running", i) for i in range(1, 5)] + [
        ("finished", 4)
    ]
    slow = copy.deepcopy(prompt)
    slow["2"]["inputs"].update(steps=1000, seconds=100.0)
    answer = await c.submit(slow)
    await c.until(lambda f: f["type"] == "progress" and f["data"]["value"] == 2)
    await c.post("/interrupt", {"prompt_id": answer["prompt_id"]})
    frames = await c.wait_done(answer["prompt_id"])
    interrupted = next(f["data"] for f in frames if f["type"] == "execution_interrupted")
    assert (interrupted["node_id"], interrupted["node_type"]) == ("2", "SimulatedSampler")
    assert [f["type"] for f in frames[-3:]] == ["execution_interrupted", "status", "executing"]
    await c.close()
