"""The gateway's live run: `GET /api/runs/<id>/events` as server-sent events read from the run's journal
(the same JSON as the client library prints, resumable with Last-Event-ID, signed when signing is on), and
the `/runs/<id>` page following a run in headless Chromium until its output plays."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from browser_helpers import DevTools
from comfy_generation.runstore import MediaKind, signed_media_url
from comfy_generation.runstore import events as ev
from comfy_simulator import Simulator, SimulatorSettings, running
from comfygen.v1 import generation_pb2 as pb
from generation_client import event_to_dict
from generation_service.convert import to_proto
from media_gateway.live import event_dict
from media_gateway.serve import running_gateway
from media_gateway.settings import Settings as GatewaySettings
from stack_helpers import Stack

RUN = "0b6e2a1c-3d4f-4a5b-8c6d-7e8f9a0b1c2d"


@pytest.fixture
async def simulator(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with running(SimulatorSettings(data_dir=tmp_path / "comfy", preview_method="taesd")) as sim:
        yield sim


def url_for(kind: MediaKind, run_id: str, index: int) -> str:
    return f"/api/media/{kind.value}/{run_id}/{index}"


def _every_kind() -> list[ev.EventBody]:
    estimate = ev.Estimate("2026-12-01T12:00:05.250Z", 4.75, ev.EstimateBasis.STEP_RATE_AND_HISTORY)
    output = ev.StoredOutput(
        MediaKind.IMAGE, 0, url_for(MediaKind.IMAGE, RUN, 0), "image/png", 2376, "ab" * 32, "9", "02_output_image.png"
    )
    problem = ev.NodeProblem("4", "KSampler", "value_not_in_list", "bad sampler", "sampler_name: x", "sampler_name")
    return [
        ev.Accepted("p-1", "http://gpu:8188", "portrait", "sd35", (("3", 42), ("7", 2**62))),
        ev.Queued(2, backend="http://gpu:8188", estimate=estimate),
        ev.Queued(0),
        ev.Started(0.125, estimate=None),
        ev.NodeStarted("4", "KSampler", "Sampler", overall=0.25, estimate=estimate),
        ev.NodeProgress("4", 3, 20, overall=0.4, estimate=estimate),
        ev.NodeProgress("4", 4, 20),
        ev.NodesCached(("1", "2")),
        ev.OutputReady(output),
        ev.Completed((output,), 0.125, 3.5),
        ev.Failed(ev.FailureCode.EXECUTION_ERROR, "x" * 3000, "4", "KSampler", "RuntimeError", (problem,) * 25),
        ev.Cancelled("the teacher stopped it"),
    ]


def test_every_event_has_the_client_librarys_shape() -> None:
    moments = [datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC), datetime(2026, 12, 1, 12, 0, 1, 250000, tzinfo=UTC)]
    moments.append(datetime(2026, 12, 1, 12, 0, 2, 123456, tzinfo=UTC))
    for seq, body in enumerate(_every_kind(), 1):
        event = ev.RunEvent(RUN, seq, moments[seq % 3], body)
        assert event_dict(event, url_for) == event_to_dict(to_proto(event)), type(body).__name__


def _sample_workflow(steps: int, seconds: float) -> str:
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 77}},
        "2": {"class_type": "SimulatedSampler", "inputs": {"steps": steps, "seconds": seconds, "images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "live"}},
    }
    return json.dumps(graph)


async def _sse(client: httpx.AsyncClient, url: str, **headers: str) -> list[tuple[str, dict[str, Any], str]]:
    """(event name, data, id) of every event until the stream ends."""
    found: list[tuple[str, dict[str, Any], str]] = []
    async with client.stream("GET", url, headers=headers, timeout=60) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "event" in fields:
                    found.append((fields["event"], json.loads(fields["data"]), fields.get("id", "")))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return found


async def test_run_events_stream_live_and_resume_with_last_event_id(stack: Stack) -> None:
    spec = pb.RunSpec(workflow_json=_sample_workflow(10, 1.0), live_previews=True, keep_preview=True)
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=spec))).run
    url = f"/api/runs/{run.run_id}/events"
    streamed = await _sse(stack.http, url)
    journaled = [(n, d, i) for n, d, i in streamed if n != "preview"]
    assert [int(i) for _, _, i in journaled] == list(range(1, len(journaled) + 1))  # the journal: every event
    assert journaled[-1][0] == "completed"
    run_events = len(journaled)
    # The journal, every event; a WatchRun of the finished run has each node's last progress only.
    watched = [r.event async for r in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id))]
    expected = [event_to_dict(e) for e in watched if e.WhichOneof("kind") != "preview"]
    seqs = {d["seq"] for d in expected}
    journaled = [(n, d, i) for n, d, i in journaled if int(i) in seqs]
    base = stack.gateway.base_url
    for got, want in zip([d for _, d, _ in journaled], expected, strict=True):
        for output in [got, *got.get("outputs", [])] if got["type"] in ("output_ready", "completed") else []:
            output["url"] = base + output["url"] if "url" in output else None
        for output in [want, *want.get("outputs", [])] if want["type"] in ("output_ready", "completed") else []:
            output["url"] = output["url"].split("?")[0] if "url" in output else None
        assert got == want
    assert [n for n, _, _ in journaled] == [d["type"] for d in expected]
    previews = [d for n, d, _ in streamed if n == "preview"]
    assert previews and all(d["url"].startswith(f"/api/runs/{run.run_id}/preview") for d in previews)
    image = await stack.http.get(previews[-1]["url"])
    assert (
        image.status_code == 200 and image.headers["content-type"] == "image/jpeg" and image.content[:2] == b"\xff\xd8"
    )

    resumed = await _sse(stack.http, url, **{"Last-Event-ID": "3"})
    assert [int(i) for n, _, i in resumed if n != "preview"] == list(range(4, run_events + 1))
    bad = await stack.http.get(url, headers={"Last-Event-ID": "three"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]
    missing = await stack.http.get("/api/runs/0b6e2a1c-3d4f-4a5b-8c6d-7e8f9a0b1c2d/events")
    assert missing.status_code == 404 and set(missing.json()) == {"error"}


async def test_signed_run_events_need_the_pages_signature(stack: Stack) -> None:
    spec = pb.RunSpec(workflow_json=_sample_workflow(2, 0.2))
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=spec))).run
    settings = GatewaySettings(runs_dir=stack.runs_dir, listen="127.0.0.1:0", signing_secret="s3cret-for-tests")
    async with running_gateway(settings) as gateway, httpx.AsyncClient(base_url=gateway.base_url) as http:
        unsigned = await http.get(f"/api/runs/{run.run_id}/events")
        assert unsigned.status_code == 403
        page = await http.get(signed_media_url(f"/runs/{run.run_id}", "s3cret-for-tests", 4102444800))
        events_url = page.text.split('data-events="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        assert "sig=" in events_url
        streamed = await _sse(http, events_url)
    assert streamed[-1][0] == "completed" and "sig=" in streamed[-1][1]["outputs"][0]["url"]


LIVE_CHECK = """
new Promise((resolve, reject) => {
  const steps = [], previews = new Set();
  const look = () => {
    const bar = document.getElementById("steps"), preview = document.getElementById("preview");
    if (!steps.length || steps[steps.length - 1] !== bar.value) steps.push(bar.value);
    if (!preview.hidden && preview.src) previews.add(preview.src);
    const image = document.querySelector('section.output[data-type="image"] img');
    const status = document.getElementById("status").textContent;
    if (status === "completed" && image && image.complete && image.naturalWidth > 0) {
      resolve({steps, previews: previews.size, width: image.naturalWidth, status,
               overall: document.getElementById("overall").textContent});
      return;
    }
    if (status === "failed" || status === "cancelled") { reject(new Error(status)); return; }
    requestAnimationFrame(look);
  };
  setTimeout(() => reject(new Error("the page did not follow the run: " + JSON.stringify(steps))), 40000);
  look();
})
"""


async def test_the_run_page_follows_the_run_until_its_output_plays(stack: Stack, devtools: DevTools) -> None:
    spec = pb.RunSpec(workflow_json=_sample_workflow(12, 3.0), live_previews=True)
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=spec))).run
    session = await devtools.open_page(f"{stack.gateway.base_url}/runs/{run.run_id}")
    result = await asyncio.wait_for(devtools.evaluate(session, LIVE_CHECK), 60)
    assert result["status"] == "completed" and result["width"] == 64
    steps = result["steps"]  # as sampled once per frame: a step the next event replaced at once is missed
    rising = steps[: steps.index(max(steps)) + 1]
    assert max(steps) >= 6 and len(set(rising)) >= 3 and rising == sorted(rising), steps  # the bar advanced
    assert result["previews"] >= 2  # the preview changed
    assert result["overall"] == "100% overall"


async def test_the_events_of_a_run_refused_before_it_was_accepted_end_at_once(stack: Stack) -> None:
    unknown = json.dumps({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=unknown)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (run_id,) = [p.name for p in stack.runs_dir.iterdir() if p.is_dir()]  # recorded as failed, no events
    assert await asyncio.wait_for(_sse(stack.http, f"/api/runs/{run_id}/events"), 20) == []
