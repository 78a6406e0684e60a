"""The README's code examples run as written, against the real service."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from stack_helpers import REPO, Stack


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def example(marker: str) -> str:
    (block,) = [b for b in python_blocks() if marker in b]
    return block


async def test_the_starlette_relay_streams_a_run_as_server_sent_events(stack: Stack) -> None:
    code = example("text/event-stream").replace("genservice:50051", f"127.0.0.1:{stack.service.port}")
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    transport = httpx.ASGITransport(app=namespace["app"])
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as browser:
        started = await browser.post("/runs", json={"prompt": 'a "quoted" fox'})
        run_id = started.json()["run_id"]
        async with browser.stream("GET", f"/runs/{run_id}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            body = (await response.aread()).decode()
        resumed = (await browser.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "2"})).text
    await namespace["client"].close()

    events = [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith("data: ")]
    ids = [int(line.removeprefix("id: ")) for line in body.splitlines() if line.startswith("id: ")]
    assert ids == list(range(1, len(ids) + 1))
    assert events[0]["type"] == "accepted" and events[-1]["type"] == "completed"
    assert events[-1]["completed"]["outputs"][0]["mime"] == "image/png"
    assert [int(line[4:]) for line in resumed.splitlines() if line.startswith("id: ")][0] == 3  # Last-Event-ID


async def test_the_client_example_reports_parameter_problems(stack: Stack, capsys: Any) -> None:
    code = example("InvalidRequestError").replace("genservice:50051", f"127.0.0.1:{stack.service.port}")
    code = code.replace('"seconds": 12', '"seconds": 9999')  # make the example meet a bound
    body = "\n".join("    " + line for line in code.splitlines())
    namespace: dict[str, Any] = {"TOKEN": None}
    exec(compile(f"async def main():\n{body}\n", "README.md", "exec"), namespace)
    await namespace["main"]()
    assert "params.seconds" in capsys.readouterr().out
