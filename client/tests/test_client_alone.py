"""The client as a web app installs it: alone (no service packages), against a running service."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import WORKFLOWS, Service, free_port
from generation_client import (
    AsyncGenerationClient,
    GenerationClient,
    GenerationClientError,
    RunFailedError,
    UnavailableError,
    event_to_dict,
    message_to_dict,
    messages,
)

SERVICE_ONLY = {"av", "numpy", "granian", "starlette", "aiohttp", "uvicorn", "prometheus-client"}


def quick_image(steps: int = 3) -> dict[str, Any]:
    graph = json.loads((WORKFLOWS / "image.json").read_text())
    graph["1"]["inputs"].update(width=32, height=32)
    graph["2"]["inputs"].update(steps=steps, seconds=0.05 * steps)
    return graph


def dependency_closure(name: str) -> set[str]:
    """Every distribution ``name`` needs at run time (no extras), by its installed metadata."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        for requirement in dist.requires or ():
            if "extra ==" in requirement:
                continue
            dep = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_client_needs_only_grpc_and_protobuf() -> None:
    closure = dependency_closure("comfy-generation-client")
    assert closure & SERVICE_ONLY == set()
    assert {"grpcio", "protobuf", "googleapis-common-protos"} <= closure
    top_level = {Path(str(f)).parts[0] for f in importlib.metadata.files("comfy-generation-client") or ()}
    assert "generation_service" not in top_level  # the stubs have an import path of their own


def test_blocking_generate_and_run(service: Service) -> None:
    with GenerationClient(service.target, wait_for_ready=True) as client:
        events = [event_to_dict(e) for e in client.generate(quick_image(), name="alone")]
        assert events[0]["type"] == "accepted" and events[-1]["type"] == "completed"
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # ints, not strings
        assert events[-1]["outputs"][0]["media_type"] == "image"
        run = client.run(WORKFLOWS / "image.json")  # a Path is read as the workflow file
        assert run.status == messages.RUN_STATUS_COMPLETED and run.workflow_name == "image"
        assert message_to_dict(run)["status"] == "completed"


async def test_async_run_raises_when_the_run_fails(service: Service, tmp_path: Path) -> None:
    async with AsyncGenerationClient(service.target, wait_for_ready=True) as client:
        run = await client.run(template="solid_image", params={"width": 16, "height": 16})
        assert message_to_dict(run)["params"]["width"] == 16  # typed values, not JSON text
        with pytest.raises(RunFailedError) as info:
            await client.run(quick_image(steps=200), execution_timeout=0.3)
        assert info.value.run.failure.code == messages.FAILURE_CODE_DEADLINE_EXCEEDED


def test_bad_arguments_fail_before_any_call(service: Service) -> None:
    with GenerationClient(service.target) as client:
        with pytest.raises(TypeError):
            client.submit(quick_image(), reqest_id="typo")  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="pass Path"):
            client.submit(str(WORKFLOWS / "image.json"))  # a file's name is not its JSON


def test_timeouts_and_wait_for_ready() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    with GenerationClient(nobody, timeout=10) as client:
        with pytest.raises(UnavailableError):  # nothing listens: UNAVAILABLE once the retries are spent
            client.templates()
        with pytest.raises(UnavailableError):  # not retried: a repeat could start a second run
            client.submit(quick_image())
        with pytest.raises(GenerationClientError) as info:
            client.templates(wait_for_ready=True, timeout=0.5)  # waits for the port until the deadline
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_call_waits_for_a_service_that_starts_later(tmp_path: Path) -> None:
    from conftest import STACK_PYTHON

    port = free_port()
    async with AsyncGenerationClient(f"127.0.0.1:{port}", wait_for_ready=True, timeout=60) as client:
        pending = asyncio.ensure_future(client.templates())
        args = ["--backend-url", "http://127.0.0.1:9", "--runs-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}"]
        proc = await asyncio.create_subprocess_exec(STACK_PYTHON, "-m", "generation_service", *args)
        try:
            assert "solid_image" in {t.name for t in await pending}
        finally:
            proc.terminate()
            await proc.wait()


def test_genctl_json_through_head_exits_cleanly(service: Service) -> None:
    genctl = [sys.executable, "-m", "genctl", "--server", service.target]
    done = subprocess.run(
        f"{' '.join(genctl)} generate {WORKFLOWS / 'image.json'} --json | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert json.loads(done.stdout)["type"] == "accepted"
    version = subprocess.run([*genctl, "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert version.stdout.strip() == f"genctl {importlib.metadata.version('comfy-generation-client')}"
