"""The run logic's edge cases, on a real Runner over run storage in tmp_path and an in-memory ComfyUI:
outputs that fail part-way, history that lags or never comes, prompts the backend forgets, restarts,
a backend that is down at start-up, and damaged run folders."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from comfy_generation.runstore import (
    METADATA_FILE,
    RunOptions,
    RunStatus,
    RunStore,
    new_run_id,
)
from comfy_generation.runstore import events as ev
from comfy_generation.runstore.layout import WORKFLOW_FILE
from generation_service.errors import RunDamaged, WorkflowRejected
from generation_service.run_writer import NewRun, RunWriter
from generation_service.runner import RunSpec
from generation_service.storage_health import StorageHealth
from memory_backend import (
    PNG,
    DropSocket,
    Forget,
    MemoryBackend,
    OutputFile,
    Prompt,
    RunLogic,
    Script,
    WaitFor,
    comfy_run,
    run_script,
    small_policy,
)
from simulator_helpers import tokens, transcript

GRAPH: dict[str, Any] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
        "_meta": {"title": "Blank canvas"},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "first"}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "second"}},
}
SPEC = RunSpec(json.dumps(GRAPH), workflow_name="two images")
OTHER_PNG = PNG[:8] + bytes(reversed(PNG[8:]))  # a second image of the same size, other bytes
TIMEOUT = 10.0


@pytest.fixture
async def logic(tmp_path: Path) -> AsyncIterator[RunLogic]:
    harness = RunLogic(tmp_path / "runs", MemoryBackend(), small_policy())
    try:
        yield harness
    finally:
        await harness.close()


def use_policy(logic: RunLogic, **overrides: Any) -> None:
    """Other timings, before any run started."""
    logic.policy = small_policy(**overrides)
    logic.runner = logic.new_runner()


def assert_well_formed(events: list[ev.RunEvent]) -> None:
    """One run, seq 1..n without gaps, accepted first, exactly one terminal event, last."""
    assert len({e.run_id for e in events}) == 1
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert isinstance(events[0].body, ev.Accepted)
    assert [e.is_terminal for e in events].count(True) == 1 and events[-1].is_terminal


def run_files(logic: RunLogic, run_id: str) -> list[str]:
    return sorted(p.name for p in logic.store.run_dir(run_id).iterdir())


def prompt_of(logic: RunLogic, run_id: str) -> Prompt:
    return logic.backend.prompts[RunStore(logic.root).read_record(run_id).prompt_id]


def assert_completed_with(logic: RunLogic, events: list[ev.RunEvent], data: list[bytes]) -> None:
    """The run completed with one stored output per ``data``, in order, each served from the run's folder."""
    assert_well_formed(events)
    completed = events[-1].body
    assert isinstance(completed, ev.Completed), completed
    assert [o.sha256 for o in completed.outputs] == [hashlib.sha256(d).hexdigest() for d in data]
    assert [e.body.output for e in events if isinstance(e.body, ev.OutputReady)] == list(completed.outputs)
    run_id = events[0].run_id
    record = RunStore(logic.root).read_record(run_id)
    assert record.status == RunStatus.COMPLETED and record.staged == ()
    assert [e.filename for e in record.outputs()] == [o.filename for o in completed.outputs]
    for output, expected in zip(completed.outputs, data, strict=True):
        assert (logic.store.run_dir(run_id) / output.filename).read_bytes() == expected
    assert not [n for n in run_files(logic, run_id) if n.startswith(".")]  # no staged or partial file


# -- the in-memory backend speaks ComfyUI's shapes ----------------------------------------------------


async def test_the_memory_backend_sends_the_frames_and_history_a_real_comfyui_sends() -> None:
    recorded = transcript("a_image")
    prompt_id = recorded["steps"]["run"]["post_prompt"]["response"]["body"]["prompt_id"]
    graph = recorded["steps"]["run"]["post_prompt"]["request"]["body"]["prompt"]
    frames = [f["json"] for f in recorded["websockets"][0]["frames"] if f["kind"] == "text"]
    own = [f for f in frames if f["data"].get("prompt_id") == prompt_id]  # what a run's subscription gets
    real_history = recorded["steps"]["run"]["history"]["response"]["body"][prompt_id]

    backend = MemoryBackend()
    outputs = [OutputFile("3", type="temp"), OutputFile("2")]
    backend.scripts.append(Script(comfy_run(["1", "3", "2"], outputs=outputs), outputs))
    sub = backend.subscribe(str(uuid.uuid4()))
    assert await backend.submit(sub, graph) == {}
    prompt = await backend.next_prompt()
    await backend.until(lambda: prompt.script_done)
    received = []
    while not sub.frames.empty():
        received.append(sub.frames.get_nowait())
    assert tokens(received) == tokens(own)
    assert received[-1] == {"type": "executing", "data": {"node": None, "prompt_id": sub.prompt_id}}
    assert [r.filename for r in prompt.refs][1] == "image_00001_.png"  # the prefix "transcript/image"
    mine = backend.history_entries[sub.prompt_id]
    assert mine.keys() == real_history.keys()
    assert mine["outputs"] == {
        n: {"images": [{**f, "filename": ref.filename} for f in real_history["outputs"][n]["images"]]}
        for n, ref in zip(["3", "2"], prompt.refs, strict=True)
    }
    assert [m[0] for m in mine["status"]["messages"]] == [m[0] for m in real_history["status"]["messages"]]
    assert {k: v for k, v in mine["status"].items() if k != "messages"} == {
        k: v for k, v in real_history["status"].items() if k != "messages"
    }
    await backend.close()


async def test_a_run_streams_its_frames_as_events_in_order_and_completes(logic: RunLogic) -> None:
    outputs = [OutputFile("2"), OutputFile("3", data=OTHER_PNG)]
    start = asyncio.Event()
    logic.backend.scripts.append(run_script(outputs, progress={"1": 3}, pause_before=("execution_start", start)))
    handle = await logic.runner.start(SPEC)
    queued = await logic.until_event(handle.run_id, lambda e: isinstance(e.body, ev.Queued))
    assert queued.body == ev.Queued(0)
    start.set()
    events = await logic.events(handle.run_id)

    assert_completed_with(logic, events, [PNG, OTHER_PNG])
    assert [ev.kind_name(e.body) for e in events] == [
        "accepted",
        "queued",
        "started",
        *["node_started"] + ["node_progress"] * 3,
        "node_started",
        "node_started",
        "output_ready",
        "output_ready",
        "completed",
    ]
    assert [(e.body.value, e.body.max) for e in events if isinstance(e.body, ev.NodeProgress)] == [
        (1, 3),
        (2, 3),
        (3, 3),
    ]
    started = [e.body for e in events if isinstance(e.body, ev.NodeStarted)]
    assert [(n.node_id, n.class_type, n.title) for n in started] == [
        ("1", "EmptyImage", "Blank canvas"),
        ("2", "SaveImage", ""),
        ("3", "SaveImage", ""),
    ]
    record = RunStore(logic.root).read_record(handle.run_id)
    refs = [e.metadata.backend_ref for e in record.outputs()]  # type: ignore[union-attr]
    folder = f"gensvc/{handle.run_id}"  # the run's own prefix, which the backend named its files after
    assert refs == [("2", "2_first_00001_.png", folder, "output"), ("3", "3_second_00001_.png", folder, "output")]


# -- outputs ---------------------------------------------------------------------------------------


async def test_a_download_that_breaks_off_fails_the_run_and_keeps_serves_and_lists_no_output(
    logic: RunLogic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="generation_service.follower")
    first, second = OutputFile("2"), OutputFile("3", data=OTHER_PNG, fail_after=1500)
    logic.backend.scripts.append(run_script([first, second]))
    handle = await logic.runner.start(SPEC)
    events = await logic.events(handle.run_id)

    assert_well_formed(events)
    failed = events[-1].body
    assert isinstance(failed, ev.Failed), failed
    assert failed.code == ev.FailureCode.OUTPUT_FAILED and failed.node_id == "3"
    prompt = prompt_of(logic, handle.run_id)
    assert prompt.refs[1].filename in failed.message
    # The first output was downloaded and staged before the second broke off.
    assert logic.backend.completed_downloads[prompt.refs[0]] == 1
    assert logic.backend.downloads[prompt.refs[1]] == 1 and logic.backend.completed_downloads[prompt.refs[1]] == 0
    assert any("stored 02_output_image.png" in r.getMessage() for r in caplog.records)
    assert not [e for e in events if isinstance(e.body, ev.OutputReady)]

    record = RunStore(logic.root).read_record(handle.run_id)
    assert record.status == RunStatus.FAILED
    assert record.error is not None and record.error.code == ev.FailureCode.OUTPUT_FAILED
    assert [e.type for e in record.entities] == ["workflow"] and record.outputs() == []
    assert record.staged == ()
    assert run_files(logic, handle.run_id) == [WORKFLOW_FILE, "events.jsonl", METADATA_FILE]
    summary = await logic.runner.get(handle.run_id)
    assert summary.status == RunStatus.FAILED and summary.outputs == ()
    assert summary.failure is not None and summary.failure.code == ev.FailureCode.OUTPUT_FAILED


async def test_a_partly_accepted_prompt_is_taken_off_the_queue_and_the_run_rejected(logic: RunLogic) -> None:
    recorded = transcript("d_node_errors")["steps"]["missing_required_input"]["post_prompt"]["response"]["body"]
    logic.backend.scripts.append(
        run_script(
            [OutputFile("2")], pause_before=("execution_start", asyncio.Event()), node_errors=recorded["node_errors"]
        )
    )
    with pytest.raises(WorkflowRejected) as info:
        await logic.runner.start(SPEC)
    assert [(p.node_id, p.class_type, p.input_name) for p in info.value.problems] == [("2", "SaveImage", "images")]

    (prompt,) = logic.backend.prompts.values()
    assert prompt.state == "deleted" and logic.backend.queue == []
    (run_id,) = list(logic.store.run_ids())
    record = RunStore(logic.root).read_record(run_id)
    assert record.status == RunStatus.FAILED and record.error is not None
    assert record.error.code == ev.FailureCode.INVALID_WORKFLOW
    assert [p.input_name for p in record.error.node_errors] == ["images"]
    assert run_id not in logic.runner.runs and logic.backend.subscriptions == {}


# -- history that comes late, or never --------------------------------------------------------------


async def test_history_that_shows_late_after_the_last_frame_is_lag_not_loss(logic: RunLogic) -> None:
    use_policy(logic, poll_s=0.05, lost_grace_s=2.0)
    lookups = 8  # about 0.35 s of "no history" at this poll interval: well within the grace
    first, second = OutputFile("2"), OutputFile("3", data=OTHER_PNG)
    logic.backend.scripts.append(run_script([first, second], history_after_lookups=lookups))
    handle = await logic.runner.start(SPEC)
    events = await logic.events(handle.run_id)

    assert_completed_with(logic, events, [PNG, OTHER_PNG])
    prompt = prompt_of(logic, handle.run_id)
    assert prompt.lookups_since_written == lookups + 1  # it looked again until history answered
    assert prompt.arrival("executing", node=None) < events[-1].time.timestamp()


async def test_history_that_never_shows_fails_prompt_lost_only_after_the_grace(logic: RunLogic) -> None:
    grace = 0.5
    use_policy(logic, poll_s=0.05, lost_grace_s=grace)
    logic.backend.scripts.append(run_script([OutputFile("2")], history_gate=asyncio.Event()))
    handle = await logic.runner.start(SPEC)
    events = await logic.events(handle.run_id)

    assert_well_formed(events)
    failed = events[-1].body
    assert isinstance(failed, ev.Failed) and failed.code == ev.FailureCode.PROMPT_LOST, failed
    prompt = prompt_of(logic, handle.run_id)
    assert events[-1].time.timestamp() - prompt.arrival("executing", node=None) >= grace
    assert prompt.lookups_since_written >= 3
    record = RunStore(logic.root).read_record(handle.run_id)
    assert record.status == RunStatus.FAILED and record.error is not None
    assert record.error.code == ev.FailureCode.PROMPT_LOST


async def test_a_backend_that_stops_answering_at_the_last_frame_is_waited_for_like_any_other_time(
    logic: RunLogic,
) -> None:
    release = asyncio.Event()
    steps = comfy_run(["1", "2"], outputs=[OutputFile("2")])
    steps.insert(len(steps) - 1, WaitFor(release))  # before the final executing (node null)
    logic.backend.scripts.append(Script(steps, [OutputFile("2")]))
    handle = await logic.runner.start(SPEC)
    await logic.until_event(handle.run_id, lambda e: isinstance(e.body, ev.NodeStarted) and e.body.node_id == "2")
    logic.backend.down = True
    release.set()
    await logic.backend.until(lambda: logic.backend.unavailable.total() >= 4)
    assert logic.backend.unavailable["history"] >= 1  # the look after the last frame was refused too
    assert (await logic.runner.get(handle.run_id)).status == RunStatus.RUNNING
    logic.backend.down = False
    events = await logic.events(handle.run_id)

    assert_completed_with(logic, events, [PNG])


# -- a prompt absent from queue and history while the socket is down ---------------------------------


async def test_a_prompt_absent_from_queue_and_history_is_lost_only_after_the_grace(logic: RunLogic) -> None:
    grace = 0.5
    use_policy(logic, lost_grace_s=grace)
    # The prompt runs node 2; then the socket drops and the backend forgets the prompt.
    steps = comfy_run(["1", "2"])
    at = next(i for i, s in enumerate(steps) if isinstance(s, dict) and s["type"] == "execution_success")
    logic.backend.scripts.append(Script([*steps[:at], DropSocket(), Forget(), WaitFor(asyncio.Event())]))
    handle = await logic.runner.start(SPEC)
    run_id = handle.run_id
    events = await logic.events(run_id)
    prompt = prompt_of(logic, run_id)

    assert_well_formed(events)
    failed = events[-1].body
    assert isinstance(failed, ev.Failed) and failed.code == ev.FailureCode.PROMPT_LOST, failed
    assert "no longer knows" in failed.message
    assert prompt.forgotten_at is not None
    assert events[-1].time.timestamp() - prompt.forgotten_at >= grace
    assert prompt.absent_lookups >= 3  # it kept looking through the grace
    assert RunStore(logic.root).read_record(run_id).status == RunStatus.FAILED


async def test_a_prompt_that_reappears_in_history_within_the_grace_completes(logic: RunLogic) -> None:
    grace = 2.0
    use_policy(logic, lost_grace_s=grace)
    outputs = [OutputFile("2"), OutputFile("3", data=OTHER_PNG)]
    logic.backend.scripts.append(run_script(outputs, pause_before=("execution_success", asyncio.Event())))
    handle = await logic.runner.start(SPEC)
    run_id = handle.run_id
    await logic.until_event(run_id, lambda e: isinstance(e.body, ev.NodeStarted) and e.body.node_id == "2")
    prompt = prompt_of(logic, run_id)
    logic.backend.drop_socket()
    logic.backend.forget(prompt.prompt_id)
    await logic.backend.until(lambda: prompt.absent_lookups >= 2)
    assert prompt.forgotten_at is not None
    logic.backend.write_history(prompt.prompt_id)
    events = await logic.events(run_id)

    assert_completed_with(logic, events, [PNG, OTHER_PNG])
    assert prompt.history_written_at is not None and prompt.history_written_at - prompt.forgotten_at < grace


# -- restarts ---------------------------------------------------------------------------------------


async def test_a_resumed_run_completes_from_history_without_downloading_staged_outputs_again(
    logic: RunLogic,
) -> None:
    hold = asyncio.Event()
    first, second = OutputFile("2"), OutputFile("3", data=OTHER_PNG, hold_after=1000, hold=hold)
    logic.backend.scripts.append(run_script([first, second]))
    handle = await logic.runner.start(SPEC)
    prompt = await logic.backend.next_prompt()
    await logic.backend.until(lambda: prompt.refs[1] in logic.backend.holding)
    seen = logic.runner.runs[handle.run_id].last_seq
    await logic.runner.close()  # mid-run: the first output staged, the second half-downloaded

    left = RunStore(logic.root).read_record(handle.run_id)
    assert left.status == RunStatus.RUNNING
    assert [e.metadata.backend_ref[1] for e in left.staged] == [prompt.refs[0].filename]  # type: ignore[union-attr]
    assert prompt.state == "done"  # the backend finished the prompt meanwhile
    hold.set()
    await logic.restart(recover=False)
    assert await logic.runner.recover() == 1
    events = await logic.events(handle.run_id)

    assert_completed_with(logic, events, [PNG, OTHER_PNG])
    assert len(events) > seen
    assert logic.backend.downloads[prompt.refs[0]] == 1  # staged before the restart: not downloaded again
    assert logic.backend.downloads[prompt.refs[1]] == 2  # broken off by the restart: downloaded again
    assert run_files(logic, handle.run_id) == [
        WORKFLOW_FILE,
        "02_output_image.png",
        "03_output_image.png",
        "events.jsonl",
        METADATA_FILE,
    ]
    summary = await logic.runner.get(handle.run_id)
    assert summary.status == RunStatus.COMPLETED and len(summary.outputs) == 2


async def test_closing_the_runner_leaves_each_unfinished_run_recorded_as_it_is(logic: RunLogic) -> None:
    release = asyncio.Event()
    logic.backend.scripts.append(run_script([OutputFile("2")], pause_before=("execution_success", release)))
    handle = await logic.runner.start(SPEC)
    await logic.until_event(handle.run_id, lambda e: isinstance(e.body, ev.NodeStarted) and e.body.node_id == "2")
    await logic.runner.close()

    left = RunStore(logic.root).read_record(handle.run_id)
    assert left.status == RunStatus.RUNNING
    assert (left.current_state.step, left.current_state.node_id) == ("running", "2")


async def test_a_resumed_run_whose_record_lags_its_journal_reports_what_the_journal_says(logic: RunLogic) -> None:
    release = asyncio.Event()
    logic.backend.scripts.append(run_script([OutputFile("2")], pause_before=("execution_success", release)))
    handle = await logic.runner.start(SPEC)
    await logic.until_event(handle.run_id, lambda e: isinstance(e.body, ev.NodeStarted) and e.body.node_id == "2")
    await logic.runner.close()
    # A killed process leaves the record as it last wrote it: progress is written a moment late.
    _edit_record(logic.store, handle.run_id, status="accepted", current_state={"step": "submitting"})

    runner = await logic.restart()
    assert (await runner.get(handle.run_id)).status == RunStatus.RUNNING
    running, _ = await runner.list_runs(frozenset({RunStatus.RUNNING}), 10, "")
    assert [s.run_id for s in running] == [handle.run_id]
    release.set()
    assert_completed_with(logic, await logic.events(handle.run_id), [PNG])


async def test_start_up_while_the_backend_is_down_resumes_once_it_answers(logic: RunLogic) -> None:
    release = asyncio.Event()
    logic.backend.scripts.append(run_script([OutputFile("2")], pause_before=("execution_success", release)))
    handle = await logic.runner.start(SPEC)
    await logic.until_event(handle.run_id, lambda e: isinstance(e.body, ev.NodeStarted) and e.body.node_id == "2")

    await logic.restart(recover=False)
    logic.backend.down = True
    assert await logic.runner.recover() == 1  # returns although the backend refuses every call
    await logic.backend.until(lambda: logic.backend.unavailable["queue_state"] >= 3)
    assert (await logic.runner.get(handle.run_id)).status == RunStatus.RUNNING
    logic.backend.down = False
    release.set()
    events = await logic.events(handle.run_id)

    assert_completed_with(logic, events, [PNG])


# -- damaged run folders ----------------------------------------------------------------------------


def _leave_run(store: RunStore) -> str:
    """A run folder as the service leaves an accepted run (record, workflow, journal)."""
    run_id = new_run_id()
    new = NewRun(prompt_id=str(uuid.uuid4()), backend="http://comfy.test:8188", workflow_name="", options=RunOptions())
    writer = RunWriter.create(store, StorageHealth(store.root), run_id, new, GRAPH)
    writer.journal(ev.RunEvent(run_id, 1, datetime.now(UTC), ev.Accepted(new.prompt_id, "", "")))
    writer.close()
    return run_id


def _edit_record(store: RunStore, run_id: str, **changes: Any) -> None:
    path = store.metadata_path(run_id)
    data = json.loads(path.read_text())
    for name, value in changes.items():
        if value is None:
            del data[name]
        else:
            data[name] = value
    path.write_text(json.dumps(data))


def _damage(store: RunStore) -> dict[str, str]:
    """Run folders damaged in every way start-up must survive: run id -> what the error names."""
    damaged: dict[str, str] = {}

    run_id = _leave_run(store)
    store.metadata_path(run_id).unlink()
    store.metadata_path(run_id).mkdir()
    damaged[run_id] = "metadata.json: is not a regular file"

    run_id = _leave_run(store)
    store.metadata_path(run_id).write_text("{this is not json")
    damaged[run_id] = "metadata.json: not valid JSON"

    run_id = _leave_run(store)
    store.metadata_path(run_id).write_text("[" * 100_000 + "]" * 100_000)
    damaged[run_id] = "metadata.json: nested too deeply"

    run_id = _leave_run(store)
    _edit_record(store, run_id, status="exploded")
    damaged[run_id] = "metadata.json field 'status': must be one of"

    run_id = _leave_run(store)
    _edit_record(store, run_id, timestamp=None)
    damaged[run_id] = "metadata.json field 'timestamp': is missing"

    run_id = _leave_run(store)
    store.workflow_path(run_id).unlink()
    damaged[run_id] = f"{WORKFLOW_FILE}: is missing"

    run_id = _leave_run(store)
    journal = store.events_path(run_id)
    good = journal.read_text()
    journal.write_text('{"seq": 1, "time": "yesterday"\n' + good)  # a bad line that is not the last one
    damaged[run_id] = "events.jsonl"
    return damaged


async def test_damaged_run_folders_never_stop_start_up_and_healthy_runs_beside_them_complete(
    logic: RunLogic, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()
    healthy = []
    for data in (PNG, OTHER_PNG):
        logic.backend.scripts.append(
            run_script([OutputFile("2", data=data)], pause_before=("execution_success", release))
        )
        healthy.append((await logic.runner.start(SPEC)).run_id)
        await logic.backend.next_prompt()
    await logic.restart(recover=False)
    damaged = _damage(logic.store)
    runner = logic.runner
    subscribed_before = set(logic.backend.subscriptions)

    with caplog.at_level(logging.ERROR, logger="generation_service.runner"):
        assert await runner.recover() == len(healthy)

    for run_id, problem in damaged.items():
        lines = [r.getMessage() for r in caplog.records if run_id in r.getMessage()]
        assert len(lines) == 1, (problem, lines)
        assert problem in lines[0] and "damaged run folder" in lines[0]
        with pytest.raises(RunDamaged, match=problem.replace("(", r"\(")) as info:
            await runner.get(run_id)
        assert run_id in str(info.value)
        with pytest.raises(RunDamaged):
            await runner.watch(run_id)
        assert run_id not in runner.runs
    assert runner.metrics.registry.get_sample_value("generation_damaged_run_folders_total") == len(damaged)
    assert set(logic.backend.subscriptions) - subscribed_before == {
        RunStore(logic.root).read_record(run_id).prompt_id for run_id in healthy
    }
    summaries, _ = await runner.list_runs(frozenset(), 100, "")
    assert sorted(s.run_id for s in summaries) == sorted(healthy)

    release.set()
    for run_id, data in zip(healthy, (PNG, OTHER_PNG), strict=True):
        assert_completed_with(logic, await logic.events(run_id), [data])
    # Left as they were, for an operator to repair or remove.
    assert all(logic.store.run_dir(run_id).is_dir() for run_id in damaged)


# -- cancelling -------------------------------------------------------------------------------------


async def test_cancelling_a_running_run_interrupts_its_prompt_and_keeps_no_output(logic: RunLogic) -> None:
    logic.backend.scripts.append(run_script([OutputFile("2")], pause_before=("execution_success", asyncio.Event())))
    handle = await logic.runner.start(SPEC)
    await logic.until_event(handle.run_id, lambda e: isinstance(e.body, ev.NodeStarted) and e.body.node_id == "2")
    summary = await asyncio.wait_for(logic.runner.cancel(handle.run_id, "changed my mind"), TIMEOUT)
    events = await logic.events(handle.run_id)

    assert_well_formed(events)
    assert events[-1].body == ev.Cancelled("changed my mind")
    assert summary.status == RunStatus.CANCELLED and summary.outputs == ()
    prompt = prompt_of(logic, handle.run_id)
    assert prompt.interrupted and logic.backend.calls["interrupt"] == 1
    assert logic.backend.downloads == {}
    assert run_files(logic, handle.run_id) == [WORKFLOW_FILE, "events.jsonl", METADATA_FILE]
