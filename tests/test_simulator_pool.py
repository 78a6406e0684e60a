"""Several backends: instances with their own node sets and speeds, and the SwarmUI mode with several
ComfyUI backends (discovery through GetNewSession + ListBackends, X-Swarm-Backend-ID routing, backends that
are disabled, restarted, deleted and added while clients use them)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfy_simulator import Simulator, SimulatorSettings, running
from comfy_simulator.proxy import GENERATE_DENIED, NO_BACKEND
from comfy_simulator.swarm_api import since_text
from generation_service.settings import SHIPPED_TEMPLATES_DIR
from simulator_helpers import TIMEOUT, Client, split_status, transcript, workflow
from stack_helpers import REPO

BLUR = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 255}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
    "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
}
SIMULATED_SAMPLER = {
    "1": {"class_type": "SimulatedSampler", "inputs": {"steps": 10, "seconds": 1.0}},
    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}
SELF_START_SETTINGS = [
    "StartScript",
    "ExtraArgs",
    "DisableInternalArgs",
    "AutoUpdate",
    "UpdateManagedNodes",
    "FrontendVersion",
    "EnablePreviews",
    "GPU_ID",
    "OverQueue",
    "AutoRestart",
]
FEATURES = [
    "comfyui",
    "refiners",
    "controlnet",
    "endstepsearly",
    "seamless",
    "video",
    "variation_seed",
    "freeu",
    "yolov8",
    "folderslash",
]


def sampler_graph(steps: int) -> dict[str, Any]:
    graph: dict[str, Any] = json.loads((SHIPPED_TEMPLATES_DIR / "sd35_text_to_image.workflow.json").read_text())
    graph["135"]["inputs"].update(width=64, height=64)
    graph["3"]["inputs"]["steps"] = steps
    return graph


def pin(backend_id: int) -> dict[str, str]:
    return {"X-Swarm-Backend-ID": str(backend_id)}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with running(SimulatorSettings(data_dir=tmp_path, swarm_backends=2)) as sim:
        yield sim


async def request(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, JSON body, or the text when it is not JSON)."""
    async with session.request(method, url, json=body, headers=headers) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def swarm_api(
    session: aiohttp.ClientSession, sim: Simulator, route: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    return await request(session, "POST", f"{sim.comfy_url}/API/{route}", body, headers)


async def list_backends(session: aiohttp.ClientSession, sim: Simulator, **params: Any) -> dict[str, Any]:
    status, new = await swarm_api(session, sim, "GetNewSession", {})
    assert status == 200
    status, listed = await swarm_api(session, sim, "ListBackends", {"session_id": new["session_id"], **params})
    assert status == 200, listed
    return dict(listed)


async def statuses(session: aiohttp.ClientSession, sim: Simulator) -> dict[str, tuple[str, bool]]:
    return {k: (v["status"], v["enabled"]) for k, v in (await list_backends(session, sim)).items()}


async def admin(session: aiohttp.ClientSession, sim: Simulator, method: str, path: str, body: Any = None) -> Any:
    status, answer = await request(session, method, f"{sim.comfy_url}/sim/{path}", body)
    assert status == 200, answer
    return answer


async def submit_pinned(session: aiohttp.ClientSession, sim: Simulator, backend_id: int, c: Client, graph: Any) -> str:
    body = {"prompt": graph, "client_id": c.client_id}
    status, answer = await request(session, "POST", sim.swarm_url + "/prompt", body, pin(backend_id))
    assert status == 200, answer
    return str(answer["prompt_id"])


@pytest.mark.parametrize(
    ("graph", "fast", "slow"),
    [
        (sampler_graph(steps=10), {"model_step_seconds": 0.001}, {"model_step_seconds": 0.1}),
        (SIMULATED_SAMPLER, {"sampler_speed": 100.0}, {}),
    ],
    ids=["ksampler-step-seconds", "simulated-sampler-speed"],
)
async def test_a_faster_instance_finishes_the_same_sampler_first(
    tmp_path: Path, session: aiohttp.ClientSession, graph: dict[str, Any], fast: Any, slow: Any
) -> None:
    async with (
        running(SimulatorSettings(data_dir=tmp_path / "fast", **fast)) as fast_sim,
        running(SimulatorSettings(data_dir=tmp_path / "slow", **slow)) as slow_sim,
    ):
        fast_client = await Client(session, fast_sim.comfy_url).connect()
        slow_client = await Client(session, slow_sim.comfy_url).connect()
        slow_id = (await slow_client.submit(graph))["prompt_id"]
        fast_id = (await fast_client.submit(graph))["prompt_id"]
        fast_done = asyncio.create_task(fast_client.wait_done(fast_id))
        slow_done = asyncio.create_task(slow_client.wait_done(slow_id))
        done, _ = await asyncio.wait({fast_done, slow_done}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        assert done == {fast_done}  # submitted second, finished first
        assert len([f for f in slow_client.frames if f["type"] == "progress"]) < 10  # the slow one was mid-way
        for task in (fast_done, slow_done):
            frames = await task
            assert [f["data"]["value"] for f in frames if f["type"] == "progress"] == list(range(1, 11))
        await fast_client.close()
        await slow_client.close()


async def test_without_nodes_hides_and_rejects_a_class(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    recorded = transcript("d_node_errors")["steps"]["unknown_class_type"]["post_prompt"]
    settings = SimulatorSettings(data_dir=tmp_path, without_nodes=frozenset({"ImageBlur", "SaveAudio"}))
    async with running(settings) as sim:
        c = await Client(session, sim.comfy_url).connect()
        info = await c.get("/object_info")
        assert "ImageBlur" not in info and "SaveAudio" not in info and "SaveImage" in info
        assert await c.get("/object_info/ImageBlur") == {}
        prompt = copy.deepcopy(recorded["request"]["body"]["prompt"])
        prompt["1"]["class_type"] = "ImageBlur"
        status, body = await c.post("/prompt", {"prompt": prompt, "client_id": c.client_id})
        expected = json.loads(json.dumps(recorded["response"]["body"]).replace("NoSuchNode", "ImageBlur"))
        assert (status, body) == (recorded["response"]["status"], expected)
        status, body = await c.post("/prompt", {"prompt": BLUR, "client_id": c.client_id})
        assert status == 400 and body["error"]["message"] == "Cannot execute because node ImageBlur does not exist."
        answer, _ = await c.run(workflow("a_image"))  # what the instance has still runs
        assert (await c.get(f"/history/{answer['prompt_id']}"))[answer["prompt_id"]]["status"]["completed"]
        await c.close()
    with pytest.raises(ValueError, match="NoSuchNode"):
        async with running(SimulatorSettings(data_dir=tmp_path, without_nodes=frozenset({"NoSuchNode"}))):
            pass


async def test_swarm_sessions_and_list_backends_shape(swarm: Simulator, session: aiohttp.ClientSession) -> None:
    status, new = await swarm_api(session, swarm, "GetNewSession", {})
    assert status == 200 and list(new) == ["session_id", "user_id", "output_append_user", "version", "server_id"] + [
        "permissions"
    ]
    assert len(new["session_id"]) == 40 and new["session_id"] == new["session_id"].upper()
    assert new["user_id"] == "local" and "*" in new["permissions"] and "view_backends_list" in new["permissions"]
    status, listed = await swarm_api(session, swarm, "ListBackends", {"session_id": new["session_id"]})
    assert status == 200 and list(listed) == ["0", "1"]
    for key, entry in listed.items():
        assert list(entry) == [
            "type",
            "status",
            "id",
            "settings",
            "modcount",
            "features",
            "enabled",
            "title",
            "max_usages",
            "seconds_since_used",
            "time_since_used",
            "can_load_models",
        ]
        assert entry["id"] == int(key) and list(entry["settings"]) == SELF_START_SETTINGS
        assert {k: v for k, v in entry.items() if k not in ("id", "settings")} == {
            "type": "comfyui_selfstart",
            "status": "running",
            "modcount": 0,
            "features": FEATURES,
            "enabled": True,
            "title": "",
            "max_usages": 2,
            "seconds_since_used": 0,
            "time_since_used": "Never",
            "can_load_models": True,
        }
    full = await list_backends(session, swarm, full_data=True)
    assert full["1"]["current_model"] is None and list(full["1"])[-1] == "current_model"
    by_header = await swarm_api(session, swarm, "ListBackends", {}, {"X-Session-ID": new["session_id"]})
    assert by_header == (200, listed)
    assert await swarm_api(session, swarm, "ListBackends", {"session_id": new["session_id"], "nonreal": "maybe"}) == (
        200,
        {"error": "Invalid value 'maybe' for parameter 'nonreal', must be type 'Boolean'"},
    )


async def test_swarm_api_request_rules(swarm: Simulator, session: aiohttp.ClientSession) -> None:
    url = swarm.comfy_url + "/API/ListBackends"
    assert await swarm_api(session, swarm, "ListBackends", {}) == (
        400,
        {"error_id": "basic_api", "error": "missing session id"},
    )
    invalid = (
        401,
        {"error": "Invalid session ID. You may need to refresh the page.", "error_id": "invalid_session_id"},
    )
    assert await swarm_api(session, swarm, "ListBackends", {"session_id": "0123"}) == invalid
    assert await swarm_api(session, swarm, "NoSuchRoute", {}) == (
        400,
        {"error_id": "basic_api", "error": "missing session id"},  # the session is checked before the route
    )
    _, new = await swarm_api(session, swarm, "GetNewSession", {})
    assert await swarm_api(session, swarm, "NoSuchRoute", {"session_id": new["session_id"]}) == (
        400,
        {"error_id": "bad_route", "error": "Unknown API route"},
    )
    async with session.post(url, data=b"{}", headers={"Content-Type": "text/plain"}) as resp:
        assert (resp.status, await resp.json()) == (400, {"error_id": "basic_api", "error": "Wrong content type"})
    async with session.post(url, data=b"[1]", headers={"Content-Type": "application/json"}) as resp:
        assert (resp.status, await resp.json()) == (
            400,
            {"error_id": "internal_error", "error": "An internal error occurred"},
        )
    async with session.get(url, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/Error/NoGetAPI"
    await admin(session, swarm, "DELETE", "sessions")  # as if every session had expired
    assert await swarm_api(session, swarm, "ListBackends", {"session_id": new["session_id"]}) == invalid


async def test_backend_header_keeps_prompt_history_and_events_on_one_backend(
    swarm: Simulator, session: aiohttp.ClientSession
) -> None:
    one = await Client(session, swarm.swarm_url).connect(headers=pin(1))
    zero = await Client(session, swarm.swarm_url).connect(headers=pin(0))
    prompt_id = await submit_pinned(session, swarm, 1, one, workflow("a_image"))
    frames_one = await one.wait_done(prompt_id)
    for backend_id, found in ((1, True), (0, False)):
        status, history = await request(
            session, "GET", f"{swarm.swarm_url}/history/{prompt_id}", headers=pin(backend_id)
        )
        assert status == 200 and (prompt_id in history) is found
    status, history = await request(session, "GET", f"{swarm.swarm_url}/history/{prompt_id}")
    assert history == {}  # no header: the first running backend, 0
    backend_one = swarm.swarm.get(1).comfy
    assert prompt_id in await Client(session, backend_one.url).get(f"/history/{prompt_id}")
    assert (backend_one.settings.output_dir / "transcript" / "image_00001_.png").is_file()
    assert not (swarm.settings.output_dir / "transcript").exists()
    # Backend 0's socket saw none of it: its own run of the same workflow brings exactly the frames backend 1's
    # socket got, so nothing of the first run was queued before them.
    marker = await submit_pinned(session, swarm, 0, zero, workflow("a_image"))
    frames_zero = await zero.wait_done(marker)
    assert zero.frames[1:] == frames_zero and split_status(frames_zero) == split_status(frames_one)
    assert all(f["data"].get("prompt_id") != prompt_id for f in zero.frames)
    # SwarmUI sends a prompt to the backend of its client_id's proxied socket, whatever the header says.
    elsewhere = await submit_pinned(session, swarm, 0, one, workflow("a_image"))
    await one.wait_done(elsewhere)
    assert elsewhere in await Client(session, backend_one.url).get(f"/history/{elsewhere}")
    listed = await list_backends(session, swarm)
    assert listed["1"]["time_since_used"] != "Never" and isinstance(listed["1"]["seconds_since_used"], int)
    await one.close()
    await zero.close()


async def test_disabled_backend_is_listed_disabled_and_not_routed(
    swarm: Simulator, session: aiohttp.ClientSession
) -> None:
    one = await Client(session, swarm.swarm_url).connect(headers=pin(1))
    prompt_id = await submit_pinned(session, swarm, 1, one, workflow("a_image"))
    await one.wait_done(prompt_id)
    answer = await admin(session, swarm, "POST", "backends/1/disable")
    assert answer["changed"] is True and answer["backend"]["status"] == "disabled"
    with pytest.raises(ConnectionError):  # a self-started backend's ComfyUI is stopped: its sockets close
        await one.until(lambda frame: False)
    assert await statuses(session, swarm) == {"0": ("running", True), "1": ("disabled", False)}
    status, text = await request(session, "GET", swarm.swarm_url + "/prompt", headers=pin(1))
    assert (status, text) == (400, NO_BACKEND)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await Client(session, swarm.swarm_url).connect(headers=pin(1))
    assert refused.value.status == 400
    async with session.get(swarm.swarm.get(1).comfy.url + "/prompt") as resp:
        assert resp.status == 503  # the ComfyUI itself is down
    assert (await admin(session, swarm, "POST", "backends/1/disable"))["changed"] is False  # "No change."
    assert (await admin(session, swarm, "POST", "backends/1/enable"))["backend"]["status"] == "running"
    assert await statuses(session, swarm) == {"0": ("running", True), "1": ("running", True)}
    status, history = await request(session, "GET", swarm.swarm_url + "/history", headers=pin(1))
    assert (status, history) == (200, {})  # a fresh ComfyUI process


async def test_restart_loses_queue_and_history_and_can_be_held(
    swarm: Simulator, session: aiohttp.ClientSession
) -> None:
    one = await Client(session, swarm.swarm_url).connect(headers=pin(1))
    done = await submit_pinned(session, swarm, 1, one, workflow("a_image"))
    await one.wait_done(done)
    comfy = swarm.swarm.get(1).comfy
    comfy.faults.stall = True
    pending = await submit_pinned(session, swarm, 1, one, workflow("a_image"))
    _, queue = await request(session, "GET", swarm.swarm_url + "/queue", headers=pin(1))
    assert [item[1] for item in queue["queue_pending"]] == [pending]
    answer = await admin(session, swarm, "POST", "backends/1/restart")
    assert answer["changed"] is True and answer["backend"]["status"] == "running"
    comfy.faults.reset()
    with pytest.raises(ConnectionError):
        await one.until(lambda frame: False)
    assert await request(session, "GET", swarm.swarm_url + "/queue", headers=pin(1)) == (
        200,
        {"queue_running": [], "queue_pending": []},
    )
    assert await request(session, "GET", swarm.swarm_url + "/history", headers=pin(1)) == (200, {})
    held = await admin(session, swarm, "POST", "backends/1/restart", {"hold": True})
    assert held["backend"]["status"] == "loading"
    assert await statuses(session, swarm) == {"0": ("running", True), "1": ("loading", True)}
    assert await request(session, "GET", swarm.swarm_url + "/prompt", headers=pin(1)) == (400, NO_BACKEND)
    assert (await admin(session, swarm, "POST", "backends/1/restart"))["backend"]["status"] == "running"
    again = await Client(session, swarm.swarm_url).connect(headers=pin(1))
    answer_id = await submit_pinned(session, swarm, 1, again, workflow("a_image"))
    await again.wait_done(answer_id)
    await again.close()


async def test_deleted_and_added_backends(swarm: Simulator, session: aiohttp.ClientSession) -> None:
    one = await Client(session, swarm.swarm_url).connect(headers=pin(1))
    on_one = await submit_pinned(session, swarm, 1, one, workflow("a_image"))
    await one.wait_done(on_one)
    assert (await admin(session, swarm, "DELETE", "backends/0"))["changed"] is True
    assert list(await list_backends(session, swarm)) == ["1"]
    status, history = await request(session, "GET", f"{swarm.swarm_url}/history/{on_one}")
    assert status == 200 and on_one in history  # no header: now backend 1 is the first running one
    assert await request(session, "GET", swarm.swarm_url + "/prompt", headers=pin(0)) == (400, NO_BACKEND)
    status, _ = await request(session, "DELETE", swarm.comfy_url + "/sim/backends/0")
    assert status == 404
    added = await admin(session, swarm, "POST", "backends", {"without_nodes": ["ImageBlur"]})
    assert added["id"] == 2 and added["status"] == "running"  # ids are never given out twice
    listed = await list_backends(session, swarm)
    assert list(listed) == ["1", "2"] and listed["2"]["type"] == "comfyui_selfstart"
    _, info = await request(session, "GET", swarm.swarm_url + "/object_info", headers=pin(2))
    assert "ImageBlur" not in info and "SaveImage" in info
    _, info = await request(session, "GET", swarm.swarm_url + "/object_info", headers=pin(1))
    assert "ImageBlur" in info
    status, _ = await request(session, "POST", swarm.comfy_url + "/sim/backends", {"id": 1})
    assert status == 400  # taken
    await one.close()


async def test_default_mode_lists_api_backends_sharing_one_comfyui(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running(SimulatorSettings(data_dir=tmp_path, backend_ids=(0, 3))) as sim:
        listed = await list_backends(session, sim)
        assert list(listed) == ["0", "3"]
        for entry in listed.values():
            assert entry["type"] == "comfyui_api" and entry["status"] == "running"
            assert entry["settings"] == {
                "Address": sim.comfy_url,
                "AllowIdle": False,
                "OverQueue": 1,
                "EnableFrontendDev": False,
            }
        c = await Client(session, sim.swarm_url).connect(headers=pin(3))
        prompt_id = await submit_pinned(session, sim, 3, c, workflow("a_image"))
        await c.wait_done(prompt_id)
        # Restarting or disabling an API-by-URL backend leaves its ComfyUI (and its history) alone.
        assert (await admin(session, sim, "POST", "backends/3/restart"))["backend"]["status"] == "running"
        await admin(session, sim, "POST", "backends/0/disable")
        assert await statuses(session, sim) == {"0": ("disabled", False), "3": ("running", True)}
        status, history = await request(session, "GET", f"{sim.swarm_url}/history/{prompt_id}")
        assert status == 200 and prompt_id in history
        await c.close()


async def test_authorization_and_permissions(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    settings = SimulatorSettings(
        data_dir=tmp_path, swarm_authorization="Bearer s3cret", swarm_permissions=("comfy_direct_calls",)
    )
    async with running(settings) as sim:
        for url in (sim.comfy_url + "/API/GetNewSession", sim.swarm_url + "/prompt"):
            async with session.post(url, json={}) as resp:
                assert resp.status == 401 and await resp.text() == "Unauthorized"
            async with session.post(url, json={}, headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
        async with session.get(sim.comfy_url + "/prompt") as resp:
            assert resp.status == 200  # ComfyUI itself has no such gate
        auth = {"Authorization": "Bearer s3cret"}
        status, new = await swarm_api(session, sim, "GetNewSession", {}, auth)
        assert status == 200 and new["permissions"] == ["comfy_direct_calls"]
        assert await swarm_api(session, sim, "ListBackends", {"session_id": new["session_id"]}, auth) == (
            400,
            {"error_id": "bad_permissions", "error": "You lack permissions for this route."},
        )
        assert (await request(session, "GET", sim.swarm_url + "/prompt", headers=auth))[0] == 200
        body = {"prompt": workflow("a_image")}
        assert await request(session, "POST", sim.swarm_url + "/prompt", body, auth) == (401, GENERATE_DENIED)


def test_since_text_reads_like_swarmui() -> None:
    assert [since_text(s) for s in (0, 1, 59, 61, 120, 3600, 3660, 90000)] == [
        "0 seconds from now",
        "1 second ago",
        "59 seconds ago",
        "1 minute and 1 second ago",
        "2 minutes ago",
        "1 hour ago",
        "1 hour and 1 minute ago",
        "1 day and 1 hour ago",
    ]


async def test_cli_plays_swarm_with_backends_from_flags_and_env(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    env = {
        **os.environ,
        "COMFY_SIMULATOR_DATA_DIR": str(tmp_path),
        "COMFY_SIMULATOR_WITHOUT_NODES": "ImageBlur,SaveAudio",
        "COMFY_SIMULATOR_SWARM_AUTHORIZATION": "Bearer cli",
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "comfy_simulator", "--listen", "127.0.0.1:0", "--swarm-backends", "2"),
        cwd=REPO,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            line = ""
            while "comfy_simulator ready" not in line:
                line = (await proc.stderr.readline()).decode()
                assert line, "simulator exited before it was ready"
        url = line.split("comfy_url=")[1].split()[0]
        auth = {"Authorization": "Bearer cli"}
        _, new = await request(session, "POST", url + "/API/GetNewSession", {}, auth)
        status, listed = await request(
            session, "POST", url + "/API/ListBackends", {"session_id": new["session_id"]}, auth
        )
        assert status == 200 and list(listed) == ["0", "1"]
        for backend_id in (0, 1):
            _, info = await request(
                session, "GET", url + "/ComfyBackendDirect/object_info", None, {**auth, **pin(backend_id)}
            )
            assert "ImageBlur" not in info and "SaveAudio" not in info and "SaveImage" in info
        await request(session, "POST", url + "/sim/backends/1/disable")
        _, listed = await request(session, "POST", url + "/API/ListBackends", {"session_id": new["session_id"]}, auth)
        assert (listed["1"]["status"], listed["1"]["enabled"]) == ("disabled", False)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.communicate()
    assert proc.returncode == 0


def test_new_flags_read_their_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from comfy_simulator.__main__ import parse_args

    monkeypatch.setenv("COMFY_SIMULATOR_SAMPLER_SPEED", "4")
    monkeypatch.setenv("COMFY_SIMULATOR_WITHOUT_NODES", "ImageBlur")
    monkeypatch.setenv("COMFY_SIMULATOR_SWARM_PERMISSIONS", "comfy_direct_calls")
    args = parse_args(["--swarm-backends", "3", "--model-step-seconds", "0.2"])
    assert (args.sampler_speed, args.without_nodes, args.swarm_permissions) == (4.0, "ImageBlur", "comfy_direct_calls")
    assert (args.swarm_backends, args.model_step_seconds, args.swarm_authorization) == (3, 0.2, "")
