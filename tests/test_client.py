"""The client library (async and blocking) against the real service, and genctl's commands on it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from comfy_simulator.media import png_bytes
from generation_client import (
    AsyncGenerationClient,
    AuthenticationError,
    ConflictError,
    GenerationClient,
    InvalidRequestError,
    NotFoundError,
    Param,
    event_kind,
    messages,
)
from stack_helpers import SIM_WORKFLOWS, Stack, StackFactory

UNKNOWN_RUN = "00000000-0000-4000-8000-000000000000"


def quick_image(color: int = 0x102030) -> dict[str, Any]:
    graph = json.loads((SIM_WORKFLOWS / "image.json").read_text())
    graph["1"]["inputs"].update(width=32, height=32, color=color)
    graph["2"]["inputs"].update(steps=3, seconds=0.1)
    return graph


@pytest.fixture
async def client(stack: Stack) -> Any:
    async with AsyncGenerationClient(f"127.0.0.1:{stack.service.port}") as client:
        yield client


async def test_generate_yields_typed_events_until_the_terminal_one(client: AsyncGenerationClient) -> None:
    events = [e async for e in client.generate(quick_image(), name="lib")]
    assert [event_kind(e) for e in events][0] == "accepted" and event_kind(events[-1]) == "completed"
    assert isinstance(events[-1], messages.RunEvent)
    run = await client.get(events[0].run_id)
    assert run.status == messages.RUN_STATUS_COMPLETED and run.workflow_name == "lib"


async def test_templates_with_media_from_a_file(client: AsyncGenerationClient, tmp_path: Path) -> None:
    assert "solid_image" in {t.name for t in await client.templates()}
    described = await client.describe("sd35_image_to_image")
    assert {p.name for p in described.parameters if p.required} == {"image", "prompt"}
    picture = tmp_path / "in.png"
    picture.write_bytes(png_bytes(np.full((32, 48, 3), 200, np.uint8)))
    params: dict[str, Param] = {"image": picture, "prompt": "a cat", "denoise": 0.5, "steps": 2, "seed": 7}
    events = [e async for e in client.generate(template="sd35_image_to_image", params=params)]
    assert event_kind(events[-1]) == "completed" and events[0].accepted.seeds["seed"] == 7


async def test_submit_watch_list_cancel(client: AsyncGenerationClient) -> None:
    submitted = [await client.submit(quick_image(color=c)) for c in (1, 2, 3)]
    for run in submitted:
        assert event_kind([e async for e in client.watch(run.run_id)][-1]) == "completed"
    listed = [r.run_id async for r in client.runs(page_size=1)]
    assert listed == [r.run_id for r in reversed(submitted)]
    long = quick_image()
    long["2"]["inputs"].update(steps=500, seconds=60)
    run = await client.submit(long)
    cancelled = await client.cancel(run.run_id, "enough")
    assert cancelled.status == messages.RUN_STATUS_CANCELLED and cancelled.cancel_reason == "enough"


async def test_leaving_the_loop_early_cancels_the_run(client: AsyncGenerationClient) -> None:
    long = quick_image()
    long["2"]["inputs"].update(steps=500, seconds=60)
    stream = client.generate(long)
    run_id = ""
    async for event in stream:
        run_id = event.run_id
        if event_kind(event) == "node_progress":
            break
    await stream.aclose()
    events = [e async for e in client.watch(run_id)]
    assert event_kind(events[-1]) == "cancelled"


async def test_errors_are_typed_with_what_to_fix(client: AsyncGenerationClient) -> None:
    broken = quick_image()
    broken["1"]["inputs"]["width"] = 0
    with pytest.raises(InvalidRequestError) as info:
        await client.submit(broken)
    assert info.value.violations == {
        "workflow_json.1.inputs.width": info.value.violations["workflow_json.1.inputs.width"]
    }
    with pytest.raises(InvalidRequestError) as info:
        await client.submit(template="solid_image", params={"width": "huge"})
    assert "params.width" in info.value.violations
    with pytest.raises(NotFoundError):
        await client.get(UNKNOWN_RUN)
    await client.submit(quick_image(), request_id="r-1")
    with pytest.raises(ConflictError):
        await client.submit(quick_image(color=9), request_id="r-1")
    with pytest.raises(ValueError):
        await client.submit()


async def test_tokens_through_the_client(stack_factory: StackFactory) -> None:
    stack = await stack_factory(auth_tokens="tok")
    target = f"127.0.0.1:{stack.service.port}"
    async with AsyncGenerationClient(target) as anonymous:
        with pytest.raises(AuthenticationError):
            await anonymous.get(UNKNOWN_RUN)
    async with AsyncGenerationClient(target, token="tok") as allowed:
        with pytest.raises(NotFoundError):
            await allowed.get(UNKNOWN_RUN)


async def test_the_blocking_client(stack: Stack) -> None:
    def use() -> tuple[list[str], int, type[Exception]]:
        with GenerationClient(f"127.0.0.1:{stack.service.port}") as client:
            kinds = [event_kind(e) for e in client.generate(quick_image())]
            runs = list(client.runs())
            try:
                client.get(UNKNOWN_RUN)
            except NotFoundError as exc:
                return kinds, len(runs), type(exc)
        raise AssertionError("get of an unknown run did not fail")

    kinds, count, error = await asyncio.to_thread(use)
    assert kinds[0] == "accepted" and kinds[-1] == "completed" and count == 1 and error is NotFoundError
