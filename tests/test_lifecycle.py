"""Run lifecycle over real servers: Submit, WatchRun, GetRun, ListRuns, CancelRun, deadlines,
idempotency, keep-alives, backpressure, and what happens when the backend misbehaves."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from comfygen.v1 import generation_pb2 as pb
from event_checks import assert_coalesced, assert_one_run, coalesced, read_journal
from stack_helpers import SIM_WORKFLOWS, Stack, StackFactory


def sampler_workflow(steps: int = 10, seconds: float = 0.5, color: int = 0x123456) -> dict[str, Any]:
    graph = json.loads((SIM_WORKFLOWS / "image.json").read_text())
    graph["1"]["inputs"].update(width=64, height=64, color=color)
    graph["2"]["inputs"].update(steps=steps, seconds=seconds)
    return graph


def request(graph: dict[str, Any], **fields: Any) -> pb.RunSpec:
    return pb.RunSpec(workflow_json=json.dumps(graph), **fields)


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


async def watch(stack: Stack, run_id: str, after_seq: int = 0) -> list[pb.RunEvent]:
    return [reply.event async for reply in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=after_seq))]


def kinds(events: list[pb.RunEvent]) -> list[str]:
    return [e.WhichOneof("kind") or "" for e in events]


async def first_event(stack: Stack, run_id: str, kind: str) -> pb.RunEvent:
    async for reply in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run_id)):
        event = reply.event
        if event.WhichOneof("kind") == kind:
            return event
    raise AssertionError(f"run {run_id} ended without a {kind} event")


async def backend_queue(stack: Stack) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.sim.comfy_url}/queue") as resp:
        return dict(await resp.json())


async def test_submit_returns_at_once_and_watchers_see_every_event(stack: Stack) -> None:
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow(), workflow_name="watched")))).run
    assert run.status in (pb.RUN_STATUS_ACCEPTED, pb.RUN_STATUS_QUEUED, pb.RUN_STATUS_RUNNING)
    assert run.workflow_name == "watched" and run.prompt_id and run.last_seq >= 1
    first, late = await asyncio.gather(watch(stack, run.run_id), watch(stack, run.run_id, after_seq=2))
    journal = read_journal(stack.runs_dir, run.run_id)
    assert kinds(journal)[0] == "accepted" and kinds(journal)[-1] == "completed"
    assert_one_run(first)
    assert_coalesced(first, journal)  # every event, but progress a newer one replaced if it fell behind
    assert_coalesced(late, journal[2:])
    assert late[-1] == journal[-1]
    # Replayed from the journal once finished: a watcher behind all of it gets each node's last progress.
    assert await watch(stack, run.run_id) == coalesced(journal)
    assert await watch(stack, run.run_id, after_seq=len(journal)) == []

    done = (await stack.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))).run
    assert done.status == pb.RUN_STATUS_COMPLETED and done.last_seq == len(journal)
    assert list(done.outputs) == list(first[-1].completed.outputs)
    assert done.execution.ToTimedelta().total_seconds() > 0 and done.HasField("finished")


async def test_list_runs_pages_newest_first_and_filters_by_status(stack: Stack) -> None:
    ids = [
        ((await stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow(steps=1, seconds=0))))).run).run_id
        for _ in range(3)
    ]
    for run_id in ids:
        await watch(stack, run_id)
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.stub.Generate(
            pb.GenerateRequest(spec=request({"1": {"class_type": "NoSuchNode", "inputs": {}}}))
        ).read()
    first = await stack.stub.ListRuns(pb.ListRunsRequest(page_size=2))
    second = await stack.stub.ListRuns(pb.ListRunsRequest(page_size=2, page_token=first.next_page_token))
    listed = [r.run_id for r in [*first.runs, *second.runs]]
    assert len(listed) == 4 and second.next_page_token == ""
    assert [r for r in listed if r in ids] == ids[::-1]
    completed = await stack.stub.ListRuns(pb.ListRunsRequest(statuses=[pb.RUN_STATUS_COMPLETED]))
    assert sorted(r.run_id for r in completed.runs) == sorted(ids)
    failed = await stack.stub.ListRuns(pb.ListRunsRequest(statuses=[pb.RUN_STATUS_FAILED]))
    assert [r.failure.code for r in failed.runs] == [pb.FAILURE_CODE_INVALID_WORKFLOW]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.ListRuns(pb.ListRunsRequest(page_token="garbage"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("rpc", ["WatchRun", "GetRun", "CancelRun"])
async def test_unknown_and_malformed_run_ids(stack: Stack, rpc: str) -> None:
    for run_id, code in [
        ("0" * 8 + "-0000-4000-8000-" + "0" * 12, grpc.StatusCode.NOT_FOUND),
        ("../etc/passwd", grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        message = {"WatchRun": pb.WatchRunRequest, "GetRun": pb.GetRunRequest, "CancelRun": pb.CancelRunRequest}[rpc]
        call = getattr(stack.stub, rpc)(message(run_id=run_id))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await (call.read() if rpc == "WatchRun" else call)
        assert info.value.code() == code, run_id


async def test_cancel_run_interrupts_a_running_prompt_and_is_idempotent(stack: Stack) -> None:
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow(steps=300, seconds=60))))).run
    await first_event(stack, run.run_id, "node_progress")
    cancelled = (await stack.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id, reason="teacher said stop"))).run
    assert cancelled.status == pb.RUN_STATUS_CANCELLED and cancelled.cancel_reason == "teacher said stop"
    assert (await backend_queue(stack))["queue_running"] == []  # the backend confirmed before CancelRun returned
    again = (await stack.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))).run
    assert again.status == pb.RUN_STATUS_CANCELLED and again.cancel_reason == "teacher said stop"
    events = await watch(stack, run.run_id)
    assert kinds(events)[-1] == "cancelled" and "output_ready" not in kinds(events)


async def test_cancel_run_removes_a_pending_prompt_from_the_queue(stack: Stack) -> None:
    stack.sim.faults.stall = True
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow())))).run
    assert (await backend_queue(stack))["queue_pending"][0][1] == run.prompt_id
    cancelled = (await stack.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))).run
    assert cancelled.status == pb.RUN_STATUS_CANCELLED
    assert (await backend_queue(stack))["queue_pending"] == []


async def test_cancelling_a_completed_run_changes_nothing(stack: Stack) -> None:
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow(steps=1, seconds=0))))).run
    await watch(stack, run.run_id)
    after = (await stack.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))).run
    assert after.status == pb.RUN_STATUS_COMPLETED and len(after.outputs) == 1


async def test_detached_generate_keeps_running_after_the_caller_leaves(stack: Stack) -> None:
    call = stack.stub.Generate(
        pb.GenerateRequest(
            spec=request(sampler_workflow(steps=10, seconds=0.5)), on_disconnect=pb.DISCONNECT_POLICY_DETACH
        )
    )
    reply = await call.read()
    assert isinstance(reply, pb.GenerateResponse)
    accepted = reply.event
    call.cancel()
    events = await watch(stack, accepted.run_id)
    assert kinds(events)[-1] == "completed"


async def test_queue_deadline_fails_the_run_and_clears_the_backend_queue(stack: Stack) -> None:
    stack.sim.faults.stall = True
    events = [
        reply.event
        async for reply in stack.stub.Generate(
            pb.GenerateRequest(spec=request(sampler_workflow(), queue_timeout=seconds(0.5)))
        )
    ]
    assert events[-1].failed.code == pb.FAILURE_CODE_DEADLINE_EXCEEDED
    assert "queue timeout of 0.5 s" in events[-1].failed.message
    assert (await backend_queue(stack))["queue_pending"] == []


async def test_execution_deadline_interrupts_the_backend(stack: Stack) -> None:
    graph = sampler_workflow(steps=200, seconds=60)
    events = [
        reply.event
        async for reply in stack.stub.Generate(pb.GenerateRequest(spec=request(graph, execution_timeout=seconds(0.5))))
    ]
    assert "started" in kinds(events)
    assert events[-1].failed.code == pb.FAILURE_CODE_DEADLINE_EXCEEDED
    assert "execution timeout" in events[-1].failed.message
    assert (await backend_queue(stack))["queue_running"] == []


async def test_request_id_makes_retries_return_the_same_run(stack: Stack) -> None:
    graph = sampler_workflow(steps=2, seconds=0.1)
    replies = await asyncio.gather(
        *(stack.stub.Submit(pb.SubmitRequest(spec=request(graph, request_id="lesson-7"))) for _ in range(3))
    )
    runs = [r.run for r in replies]
    assert len({r.run_id for r in runs}) == 1
    events = [
        reply.event
        async for reply in stack.stub.Generate(pb.GenerateRequest(spec=request(graph, request_id="lesson-7")))
    ]
    assert {e.run_id for e in events} == {runs[0].run_id}
    assert kinds(events)[0] == "accepted" and kinds(events)[-1] == "completed"
    listed = await stack.stub.ListRuns(pb.ListRunsRequest())
    assert len(listed.runs) == 1 and listed.runs[0].request_id == "lesson-7"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow(color=1), request_id="lesson-7")))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert runs[0].run_id in str(info.value.details())


async def test_queued_runs_send_keepalives_with_their_position(stack_factory: StackFactory) -> None:
    stack = await stack_factory(keepalive_seconds=0.1)
    stack.sim.faults.stall = True
    first = (await stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow())))).run
    second = (await stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow(color=2))))).run
    positions = []
    async for reply in stack.stub.WatchRun(pb.WatchRunRequest(run_id=second.run_id)):
        event = reply.event
        if event.HasField("queued"):
            positions.append(event.queued.position)
            if len(positions) == 3:
                stack.sim.faults.stall = False
        if event.HasField("completed"):
            break
    assert positions[:3] == [1, 1, 1]
    assert kinds(await watch(stack, first.run_id))[-1] == "completed"


async def test_too_many_runs_in_flight_is_resource_exhausted_with_a_retry_hint(stack_factory: StackFactory) -> None:
    stack = await stack_factory(max_runs_in_flight=1)
    stack.sim.faults.stall = True
    await stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow())))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow(color=2))))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = dict(info.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    retry = error_details_pb2.RetryInfo()
    assert status_pb2.Status.FromString(details).details[0].Unpack(retry)
    assert retry.retry_delay.seconds >= 1


async def test_refused_connections_are_retried_then_unavailable(stack_factory: StackFactory) -> None:
    stack = await stack_factory(backend_retries=2)
    stack.sim.faults.refuse_connections = True
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow())))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "503" in str(info.value.details())


async def test_a_backend_that_forgets_the_prompt_fails_the_run(stack_factory: StackFactory) -> None:
    stack = await stack_factory(keepalive_seconds=0.1)
    stack.sim.faults.forget_prompts = True
    events = [reply.event async for reply in stack.stub.Generate(pb.GenerateRequest(spec=request(sampler_workflow())))]
    assert events[-1].failed.code == pb.FAILURE_CODE_PROMPT_LOST
    assert "no longer knows prompt" in events[-1].failed.message


async def test_socket_drops_never_duplicate_or_reorder_events_or_outputs(stack: Stack) -> None:
    stack.sim.faults.drop_socket_after_frames = 8
    results = await asyncio.gather(
        *(
            stack.stub.Submit(pb.SubmitRequest(spec=request(sampler_workflow(steps=6, seconds=0.3, color=c))))
            for c in (1, 2, 3)
        )
    )
    for run in [r.run for r in results]:
        events = await watch(stack, run.run_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert kinds(events)[-1] == "completed"
        outputs = [e.output_ready.output for e in events if e.HasField("output_ready")]
        assert len(outputs) == 1 and list(events[-1].completed.outputs) == outputs
        got = (await stack.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))).run
        assert len(got.outputs) == 1
