"""Fan-out of a run's events to its watchers: progress coalesced for a watcher that falls behind, and each
event encoded once however many streams send it."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from comfy_generation.runstore import events as ev
from comfygen.v1 import generation_pb2 as pb
from event_checks import assert_coalesced, assert_one_run, coalesced, read_journal
from generation_service.run_handle import EventLog
from stack_helpers import Stack, StackFactory, scrape

RUN_ID = "0b6e2a1c-3d4f-4a5b-8c6d-7e8f9a0b1c2d"


def event(seq: int, body: ev.EventBody) -> ev.RunEvent:
    return ev.RunEvent(RUN_ID, seq, datetime.now(UTC), body)


def progress(node: str, value: int) -> ev.NodeProgress:
    return ev.NodeProgress(node, value, 5)


async def test_a_watcher_behind_gets_each_nodes_newest_progress_and_every_other_event() -> None:
    log = EventLog()
    in_step = log.events()
    bodies: list[ev.EventBody] = [
        ev.Accepted("p", "b", "w"),
        ev.NodeStarted("A", "Sampler", "A"),
        *[progress("A", v) for v in range(1, 6)],
        ev.NodeStarted("B", "Sampler", "B"),
        *[progress("B", v) for v in range(1, 4)],
    ]
    kept_up = []
    for seq, body in enumerate(bodies, 1):
        log.append(event(seq, body))
        kept_up.append(await anext(in_step))  # reads each event as it comes: misses none
    assert [e.seq for e in kept_up] == list(range(1, 12))

    behind = log.events()  # everything is already there: each node's progress is the newest only
    assert [(await anext(behind)).seq for _ in range(5)] == [1, 2, 7, 8, 11]
    log.append(event(12, progress("B", 4)))
    assert (await anext(behind)).seq == 12  # in step now: the next progress is not skipped
    log.append(event(13, progress("B", 5)))
    log.append(event(14, ev.Completed((), 0.0, 1.0)))
    assert [e.seq async for e in behind] == [13, 14]
    assert [e.seq async for e in log.events(after_seq=8)] == [13, 14]  # B's newest progress, then the end
    assert [e.seq async for e in in_step] == [13, 14]  # it too fell behind, by 12 and 13: 12 is left out


async def test_watchers_of_a_run_share_one_encoding_of_each_event(stack_factory: StackFactory) -> None:
    stack = await stack_factory(metrics_listen="127.0.0.1:0")
    graph = _sampler(steps=10, seconds=1.0)
    generate = stack.stub.Generate(pb.GenerateRequest(spec=pb.RunSpec(workflow_json=json.dumps(graph))))
    opening = await generate.read()
    assert isinstance(opening, pb.GenerateResponse)
    first = opening.event
    watchers = [stack.stub.WatchRun(pb.WatchRunRequest(run_id=first.run_id)) for _ in range(20)]

    async def rest() -> list[pb.RunEvent]:
        events = [first]
        while isinstance(reply := await generate.read(), pb.GenerateResponse):
            events.append(reply.event)
        return events

    async def watched(call: Any) -> list[pb.RunEvent]:
        return [reply.event async for reply in call]

    streams = await asyncio.gather(rest(), *map(watched, watchers))
    journal = read_journal(stack.runs_dir, first.run_id)
    for received in streams:
        assert_one_run(received)
        assert_coalesced(received, journal)
    metrics = await scrape(stack)
    sent = [e for received in streams for e in received]
    assert metrics['generation_stream_events_sent_total{rpc="Generate"}'] == len(streams[0])
    assert metrics['generation_stream_events_sent_total{rpc="WatchRun"}'] == len(sent) - len(streams[0])
    # 21 streams, each event encoded once: they all sent the same objects of the run's live log.
    assert metrics["generation_stream_events_encoded_total"] == len({e.seq for e in sent}) <= len(journal)
    skipped = sum(len(journal) - len(received) for received in streams)
    assert metrics["generation_stream_progress_coalesced_total"] == skipped


async def test_a_watcher_that_joins_late_gets_the_newest_progress_at_once(stack: Stack) -> None:
    spec = pb.RunSpec(workflow_json=json.dumps(_sampler(steps=40, seconds=4.0)))
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=spec))).run
    async for reply in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id)):
        if reply.event.HasField("node_progress") and reply.event.node_progress.value >= 10:
            break
    late = [reply.event async for reply in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id))]
    journal = read_journal(stack.runs_dir, run.run_id)
    assert_one_run(late)
    assert_coalesced(late, journal)
    # The first ten steps were there when it joined: it got the newest of them, not all ten.
    steps = [e.node_progress.value for e in late if e.HasField("node_progress")]
    assert steps[0] >= 10 and steps[-1] == 40
    assert await _replay(stack, run.run_id) == coalesced(journal)  # and after the end: each node's last one


async def _replay(stack: Stack, run_id: str) -> list[pb.RunEvent]:
    return [reply.event async for reply in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run_id))]


def _sampler(steps: int, seconds: float) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 7}},
        "2": {"class_type": "SimulatedSampler", "inputs": {"steps": steps, "seconds": seconds, "images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fanout"}},
    }
