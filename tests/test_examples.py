"""The apps in examples/ under their real servers (uvicorn, Flask's own), as subprocesses against a running
service stack, driven over HTTP and, for the server-sent events, by a real browser's EventSource.

The apps run on EXAMPLES_PYTHON (default: this Python); `make test-client-floors` points it at a venv
holding the client and the examples' dependencies at their declared minimum versions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx

from browser_helpers import DevTools
from event_checks import assert_coalesced_seqs, read_journal
from generation_client import event_to_dict
from stack_helpers import REPO, Stack

EXAMPLES = REPO / "examples"
EXAMPLES_PYTHON = os.environ.get("EXAMPLES_PYTHON", sys.executable)
UNKNOWN_RUN = "00000000-0000-4000-8000-000000000000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def server(stack: Stack, ready: bytes, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``EXAMPLES_PYTHON -m args...`` in examples/, once it printed ``ready`` on stderr; killed afterwards."""
    env = {**os.environ, "GENERATION_TARGET": f"127.0.0.1:{stack.service.port}"}
    proc = await asyncio.create_subprocess_exec(
        EXAMPLES_PYTHON, "-m", *args, cwd=EXAMPLES, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    seen = b""
    try:
        async with asyncio.timeout(60):
            while ready not in seen:
                line = await proc.stderr.readline()
                if not line:
                    raise AssertionError(f"{args[0]} exited before it was ready:\n{seen.decode()}")
                seen += line
        drain = asyncio.create_task(proc.stderr.read())  # keep the pipe from filling up
        try:
            yield proc
        except BaseException:
            if proc.returncode is None:
                proc.kill()
            print(f"{args[0]}'s log:\n{(seen + await drain).decode(errors='replace')}")  # shown by pytest
            raise
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            await drain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def uvicorn(stack: Stack, port: int) -> contextlib.AbstractAsyncContextManager[asyncio.subprocess.Process]:
    return server(stack, b"Application startup complete", "uvicorn", "fastapi_progress:app", "--port", str(port))


def sse(body: str) -> list[tuple[int, dict[str, Any]]]:
    """(id, data) of every message of a text/event-stream body."""
    found = []
    for message in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in message.splitlines() if ": " in line)
        if "data" in fields:
            found.append((int(fields["id"]), json.loads(fields["data"])))
    return found


async def test_the_fastapi_app_relays_a_run_as_server_sent_events(stack: Stack) -> None:
    port = free_port()
    async with uvicorn(stack, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        started = await http.post("/runs", json={"prompt": 'a "quoted" fox', "steps": 3})
        run_id = started.json()["run_id"]
        async with http.stream("GET", f"/runs/{run_id}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            body = (await response.aread()).decode()
        resumed = (await http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "2"})).text
        unknown = await http.get(f"/runs/{UNKNOWN_RUN}/events")
        refused = await http.post("/runs", json={"prompt": "x", "steps": 0})

    events = sse(body)
    journal = read_journal(stack.runs_dir, run_id)
    assert [seq for seq, _ in events] == [e["seq"] for _, e in events]
    assert_coalesced_seqs([seq for seq, _ in events], journal)  # every event (progress coalesced when behind)
    assert [e for _, e in events] == [event_to_dict(j) for j in journal if j.seq in {seq for seq, _ in events}]
    assert events[0][1]["type"] == "accepted" and events[-1][1]["type"] == "completed"
    assert events[-1][1]["outputs"][0]["mime"] == "image/png"
    resumed_seqs = [seq for seq, _ in sse(resumed)]  # Last-Event-ID: 2
    assert_coalesced_seqs(resumed_seqs, journal[2:])
    assert resumed_seqs[-1] == len(journal)
    assert unknown.status_code == 404
    assert refused.status_code == 422 and "params.steps" in refused.json()["violations"]


async def test_a_browser_event_source_reconnects_with_last_event_id(stack: Stack, devtools: DevTools) -> None:
    port = free_port()
    async with uvicorn(stack, port) as first:
        session = await devtools.open_page(f"http://127.0.0.1:{port}/")
        await devtools.evaluate(session, "window.run = window.follow('a fox', 60); true")
        await devtools.evaluate(session, "window.progressed.then(() => true)")
        first.send_signal(signal.SIGKILL)  # the stream breaks mid-run
        await first.wait()
    async with uvicorn(stack, port):  # the same address again: the browser reconnects by itself
        received = await devtools.evaluate(session, "window.run")
        opened = await devtools.evaluate(session, "window.opened")
        shown = await devtools.evaluate(session, "document.querySelector('#outputs img').src")

    ids = [r["id"] for r in received]
    assert opened >= 2  # the EventSource connected again after the server died
    assert ids == [r["event"]["seq"] for r in received] and ids[0] == 1
    assert_coalesced_seqs(ids, read_journal(stack.runs_dir, received[0]["event"]["run_id"]))  # no repeat, no loss
    assert received[-1]["event"]["type"] == "completed"
    assert shown == received[-1]["event"]["outputs"][0]["url"]
    requests = [r for r in devtools.responses(session) if r["url"].endswith("/events")]
    assert len(requests) >= 2 and all(r["status"] == 200 for r in requests)


async def test_the_flask_app_runs_a_template_with_the_blocking_client(stack: Stack) -> None:
    port = free_port()
    flask = ("flask", "--app", "flask_generate", "run", "--port", str(port))
    async with (
        server(stack, b"Running on", *flask),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http,
    ):
        done = await http.post("/generate", json={"template": "solid_image", "params": {"width": 64, "height": 32}})
        assert done.status_code == 200, done.text
        run_id, (url,) = done.json()["run_id"], done.json()["outputs"]
        run = await http.get(f"/runs/{run_id}")
        events = (await http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "1"})).text
        refused = await http.post("/generate", json={"template": "solid_image", "params": {"width": -1}})
        unknown = await http.get(f"/runs/{UNKNOWN_RUN}")

    image = await stack.http.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert run.json()["status"] == "completed" and run.json()["params"]["width"] == 64
    seqs = [seq for seq, _ in sse(events)]
    assert seqs[0] == 2 and seqs == list(range(2, seqs[-1] + 1)) and sse(events)[-1][1]["type"] == "completed"
    assert refused.status_code == 422 and "params.width" in refused.json()["violations"]
    assert unknown.status_code == 404
