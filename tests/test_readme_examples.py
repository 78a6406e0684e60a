"""The README's code examples run as written, against the real service."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

import httpx

from event_checks import assert_coalesced_seqs, read_journal
from stack_helpers import REPO, Stack


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def example(marker: str) -> str:
    (block,) = [b for b in python_blocks() if marker in b]
    return block


async def test_the_starlette_relay_streams_a_run_as_server_sent_events(stack: Stack, tmp_path: Path) -> None:
    code = example("text/event-stream").replace("genservice:50051", f"127.0.0.1:{stack.service.port}")
    (tmp_path / "relay.py").write_text(code)
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "relay:app",
        "--port",
        str(port),
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stderr is not None
        while b"Application startup complete" not in await asyncio.wait_for(server.stderr.readline(), 30):
            pass
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as browser:
            started = await browser.post("/runs", json={"prompt": 'a "quoted" fox'})
            run_id = started.json()["run_id"]
            async with browser.stream("GET", f"/runs/{run_id}/events") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                body = (await response.aread()).decode()
            resumed = (await browser.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "2"})).text
    finally:
        server.terminate()
        await server.wait()

    events = [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith("data: ")]
    ids = [int(line.removeprefix("id: ")) for line in body.splitlines() if line.startswith("id: ")]
    journal = read_journal(stack.runs_dir, run_id)
    assert ids == [e["seq"] for e in events]
    assert_coalesced_seqs(ids, journal)  # every event (progress coalesced while the relay was behind)
    assert events[0]["type"] == "accepted" and events[-1]["type"] == "completed"
    assert events[-1]["outputs"][0]["mime"] == "image/png"
    resumed_ids = [int(line[4:]) for line in resumed.splitlines() if line.startswith("id: ")]
    assert_coalesced_seqs(resumed_ids, journal[2:])  # after Last-Event-ID: 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_client_example_reports_parameter_problems(stack: Stack, capsys: Any) -> None:
    code = example("InvalidRequestError").replace("genservice:50051", f"127.0.0.1:{stack.service.port}")
    code = code.replace('"seconds": 12', '"seconds": 9999')  # make the example meet a bound
    body = "\n".join("    " + line for line in code.splitlines())
    namespace: dict[str, Any] = {"TOKEN": None}
    exec(compile(f"async def main():\n{body}\n", "README.md", "exec"), namespace)
    await namespace["main"]()
    assert "params.seconds" in capsys.readouterr().out
