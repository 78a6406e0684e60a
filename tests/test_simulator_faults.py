"""Fault switches of the simulator, and its command line."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from comfy_simulator import Simulator, SimulatorSettings, running
from simulator_helpers import Client, workflow

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with running(SimulatorSettings(data_dir=tmp_path)) as simulator:
        yield simulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_drop_socket_after_frames(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await Client(session, sim.comfy_url).connect()
    sim.faults.drop_socket_after_frames = 3
    await c.submit(workflow("a_image"))
    for _ in range(3):
        await c.next_frame()
    with pytest.raises(ConnectionError):
        await c.next_frame()
    sim.faults.drop_socket_after_frames = None
    again = await Client(session, sim.comfy_url).connect()
    _, frames = await again.run(workflow("a_image"))
    assert frames[-1]["type"] == "executing"
    await again.close()


async def test_refuse_connections_and_http_500(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.faults.refuse_connections = True
    async with session.get(sim.comfy_url + "/queue") as resp:
        assert resp.status == 503 and resp.headers["Connection"] == "close"
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await session.ws_connect(sim.comfy_url.replace("http", "ws") + "/ws")
    sim.faults.refuse_connections = False
    sim.faults.http_500_paths = {"/history"}
    for path in ("/history", "/api/history"):
        async with session.get(sim.comfy_url + path) as resp:
            assert resp.status == 500 and "Server got itself in trouble" in await resp.text()
    async with session.get(sim.comfy_url + "/queue") as resp:
        assert resp.status == 200


async def test_forget_prompts(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await Client(session, sim.comfy_url).connect()
    sim.faults.forget_prompts = True
    answer = await c.submit(workflow("a_image"))
    assert await c.get("/queue") == {"queue_running": [], "queue_pending": []}
    assert await c.get(f"/history/{answer['prompt_id']}") == {}
    sim.faults.forget_prompts = False
    await c.close()


async def test_history_delay_and_stall(sim: Simulator, session: aiohttp.ClientSession) -> None:
    c = await Client(session, sim.comfy_url).connect()
    sim.faults.history_delay_s = 0.3
    answer, _ = await c.run(workflow("a_image"))
    assert await c.get(f"/history/{answer['prompt_id']}") == {}  # executing:null came, history not yet
    async with asyncio.timeout(5):  # then it shows up (polling, as a client must)
        while not await c.get(f"/history/{answer['prompt_id']}"):
            pass
    sim.faults.history_delay_s = 0.0
    sim.faults.stall = True
    stalled = await c.submit(workflow("a_image"))
    queue = await c.get("/queue")
    assert queue["queue_running"] == [] and [i[1] for i in queue["queue_pending"]] == [stalled["prompt_id"]]
    sim.faults.stall = False
    await c.wait_done(stalled["prompt_id"])
    await c.close()


def test_cli_help_documents_env_vars() -> None:
    from comfy_simulator.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert parse_args(["--listen", "127.0.0.1:0"]).listen == "127.0.0.1:0"


async def test_cli_starts_and_stops(tmp_path: Path) -> None:
    env = {**os.environ, "COMFY_SIMULATOR_LISTEN": "127.0.0.1:0", "COMFY_SIMULATOR_DATA_DIR": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfy_simulator", cwd=REPO, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            line = ""
            while "comfy_simulator ready" not in line:
                line = (await proc.stderr.readline()).decode()
                assert line, "simulator exited before it was ready"
        url = line.split("comfy_url=")[1].split()[0]
        async with aiohttp.ClientSession() as s, s.get(url + "/prompt") as resp:
            assert await resp.json() == {"exec_info": {"queue_remaining": 0}}
        assert (tmp_path / "output").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.communicate()
    assert proc.returncode == 0
