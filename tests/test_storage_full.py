"""Run storage on a real, small tmpfs that fills up: runs in flight end failed (storage error) without a
restart, watchers still see it, new calls are refused, health follows, and nothing half-written stays."""

from __future__ import annotations

import asyncio
import errno
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from comfy_generation.runstore import RunStatus, RunStore
from comfy_generation.runstore.events import FailureCode
from comfygen.v1 import generation_pb2 as pb
from event_checks import assert_coalesced, assert_one_run, coalesced, read_journal
from stack_helpers import EXAMPLE_WORKFLOWS, SIM_WORKFLOWS, Stack, StackFactory

VOLUME_BYTES = 8 * 1024 * 1024


@pytest.fixture
def runs_volume(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/runs`` as a tmpfs of VOLUME_BYTES (the tests run as root)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={VOLUME_BYTES}", "tmpfs", str(runs)], check=True)
    try:
        yield runs
    finally:
        subprocess.run(["umount", "--lazy", str(runs)], check=True)


def fill(volume: Path, leave: int = 0) -> Path:
    """Write a filler file until the volume refuses more, then give back ``leave`` bytes."""
    filler = volume / "filler.bin"
    block = b"\xff" * 65536
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        with open(filler, "r+b") as trim:
            trim.truncate(max(0, filler.stat().st_size - leave))
    return filler


def sampler_request(steps: int, seconds: float) -> pb.RunSpec:
    graph = json.loads((SIM_WORKFLOWS / "image.json").read_text())
    graph["1"]["inputs"].update(width=64, height=64)
    graph["2"]["inputs"].update(steps=steps, seconds=seconds)
    return pb.RunSpec(workflow_json=json.dumps(graph))


async def health_becomes(stack: Stack, status: int) -> None:
    """Follow the health Watch stream until it reports ``status`` (bounded by the test's timeout)."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.service.port}")
    try:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the published stubs omit the stub's methods
        async for reply in stub.Watch(health_pb2.HealthCheckRequest(service="")):
            if reply.status == status:
                return
    finally:
        await channel.close()


async def until(condition: object, timeout_s: float = 20.0) -> None:
    """Wait for ``condition()`` to hold, looking every 50 ms (a file written by another process)."""
    assert callable(condition)
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)


def leftovers(runs: Path) -> list[Path]:
    return [p for p in runs.rglob(".*") if p.name.endswith(".partial") or p.name.startswith(".staged.")]


@pytest.fixture
async def full_stack(runs_volume: Path, stack_factory: StackFactory) -> AsyncIterator[Stack]:
    yield await stack_factory(health_check_seconds=0.2)


async def test_runs_in_flight_fail_with_a_storage_error_and_are_recorded_once_space_is_back(
    runs_volume: Path, full_stack: Stack
) -> None:
    stack = full_stack
    await health_becomes(stack, health_pb2.HealthCheckResponse.SERVING)
    events: list[pb.RunEvent] = []
    filler = None
    async for reply in stack.stub.Generate(pb.GenerateRequest(spec=sampler_request(steps=200, seconds=8.0))):
        event = reply.event
        events.append(event)
        if event.HasField("node_progress") and filler is None:
            filler = fill(runs_volume)  # the disk fills up mid-run
    run_id = events[0].run_id
    assert_one_run(events)
    assert events[-1].failed.code == pb.FAILURE_CODE_STORAGE_ERROR
    assert "run storage is full" in events[-1].failed.message
    await health_becomes(stack, health_pb2.HealthCheckResponse.NOT_SERVING)

    folders = sorted(p.name for p in runs_volume.iterdir())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.stub.Submit(pb.SubmitRequest(spec=sampler_request(steps=2, seconds=0.1)))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "run storage is full" in str(refused.value.details())
    assert sorted(p.name for p in runs_volume.iterdir()) == folders  # no folder left behind

    assert filler is not None
    filler.unlink()  # space is back
    await health_becomes(stack, health_pb2.HealthCheckResponse.SERVING)
    store = RunStore(runs_volume)
    await until(lambda: store.read_record(run_id).status == RunStatus.FAILED)
    record = store.read_record(run_id)
    assert record.error is not None and record.error.code == FailureCode.STORAGE_ERROR
    assert record.last_seq == events[-1].seq
    journaled = store.read_events(run_id)
    assert [e.seq for e in journaled] == list(range(1, record.last_seq + 1))  # every event, once, in order
    assert_coalesced(events, read_journal(runs_volume, run_id))  # the watcher: each, or a newer progress
    assert journaled[-1].is_terminal
    assert record.outputs() == [] and leftovers(runs_volume) == []
    replayed = [reply.event async for reply in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run_id))]
    assert replayed == coalesced(read_journal(runs_volume, run_id))

    after = [
        reply.event
        async for reply in stack.stub.Generate(pb.GenerateRequest(spec=sampler_request(steps=2, seconds=0.1)))
    ]
    assert after[-1].HasField("completed")  # the service carries on without a restart


# 128 kbit/s MP3: 90 s is about 1.4 MB, streamed to its file as it comes; 20 s is about 320 KB, received
# whole and then written (outputs up to SMALL_FILE_BYTES). Either is much more than is left.
@pytest.mark.parametrize(("duration", "left"), [(90.0, 256 * 1024), (20.0, 64 * 1024)], ids=["streamed", "whole"])
async def test_an_output_larger_than_the_free_space_fails_its_run_and_leaves_no_partial_file(
    runs_volume: Path, full_stack: Stack, duration: float, left: int
) -> None:
    stack = full_stack
    graph = json.loads((EXAMPLE_WORKFLOWS / "audio.json").read_text())
    graph["1"]["inputs"]["duration"] = duration
    del graph["3"]
    fill(runs_volume, leave=left)
    events = [
        reply.event
        async for reply in stack.stub.Generate(pb.GenerateRequest(spec=pb.RunSpec(workflow_json=json.dumps(graph))))
    ]
    assert events[-1].failed.code == pb.FAILURE_CODE_STORAGE_ERROR
    message = events[-1].failed.message
    assert "run storage is full" in message and "storing output" in message
    assert leftovers(runs_volume) == []
    record = RunStore(runs_volume).read_record(events[0].run_id)
    assert record.status == RunStatus.FAILED and record.outputs() == []
    assert [p.name for p in (runs_volume / events[0].run_id).iterdir() if "output" in p.name] == []
