"""The service process is killed mid-run and started again: its runs resume from run storage, by
prompt id, and end exactly once with their own outputs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import pytest

from comfy_simulator import Simulator
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from media_gateway.serve import running_gateway
from media_gateway.settings import Settings as GatewaySettings
from stack_helpers import REPO, SIM_WORKFLOWS

LISTENING = re.compile(r"generation service listening on [\d.]+:(\d+)")


class ServiceProcess:
    """``python -m generation_service`` in a child process, on a port it picks itself."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, drain: asyncio.Task[None]) -> None:
        self.proc, self.port, self._drain = proc, port, drain

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._drain


@pytest.fixture
async def service_process(tmp_path: Path, simulator: Simulator) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    runs = tmp_path / "runs"
    runs.mkdir()
    started: list[ServiceProcess] = []
    async with running_gateway(GatewaySettings(runs_dir=runs, listen="127.0.0.1:0")) as gateway:

        async def start() -> tuple[ServiceProcess, pb_grpc.GenerationServiceStub, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "generation_service",
                "--backend-url",
                simulator.comfy_url,
                "--runs-dir",
                str(runs),
                "--listen",
                "127.0.0.1:0",
                "--media-base-url",
                gateway.base_url,
                "--history-poll-seconds",
                "0.2",
                "--keepalive-seconds",
                "0.2",
                "--lost-prompt-grace-seconds",
                "2",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                cwd=REPO,
            )
            assert proc.stderr is not None
            port = await asyncio.wait_for(_listening_port(proc.stderr), 30)
            service = ServiceProcess(proc, port, asyncio.create_task(_drain(proc.stderr)))
            started.append(service)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            channels.append(channel)
            return service, pb_grpc.GenerationServiceStub(channel), gateway.base_url

        channels: list[grpc.aio.Channel] = []
        try:
            yield start
        finally:
            for channel in channels:
                await channel.close()
            for service in started:
                if service.proc.returncode is None:
                    service.proc.terminate()
                    await service.proc.wait()
                with contextlib.suppress(asyncio.CancelledError):
                    await service._drain


async def _listening_port(stream: asyncio.StreamReader) -> int:
    while line := await stream.readline():
        if match := LISTENING.search(line.decode()):
            return int(match.group(1))
    raise AssertionError("the service exited before it listened")


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def workflow(steps: int, seconds: float) -> str:
    graph = json.loads((SIM_WORKFLOWS / "image.json").read_text())
    graph["1"]["inputs"].update(width=64, height=64, color=0xABCDEF)
    graph["2"]["inputs"].update(steps=steps, seconds=seconds)
    return json.dumps(graph)


async def test_a_run_killed_mid_execution_completes_after_restart(service_process, simulator: Simulator) -> None:
    service, stub, _ = await service_process()
    run = (await stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=workflow(steps=40, seconds=2.0))))).run
    seen: list[pb.RunEvent] = []
    async for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id)):
        event = reply.event
        seen.append(event)
        if event.HasField("node_progress"):
            break
    await service.kill()

    _, stub, _ = await service_process()
    rest = [reply.event async for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id, after_seq=seen[-1].seq))]
    events = seen + rest
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert rest[-1].HasField("completed"), rest[-1]
    (output,) = rest[-1].completed.outputs
    async with httpx.AsyncClient() as http:
        body = (await http.get(output.url)).content
    assert hashlib.sha256(body).hexdigest() == output.sha256
    again = (await stub.GetRun(pb.GetRunRequest(run_id=run.run_id))).run
    assert again.status == pb.RUN_STATUS_COMPLETED and len(again.outputs) == 1


async def test_a_queued_run_survives_a_restart(service_process, simulator: Simulator) -> None:
    simulator.faults.stall = True
    service, stub, _ = await service_process()
    run = (await stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=workflow(steps=2, seconds=0.1))))).run
    await service.kill()
    _, stub, _ = await service_process()
    simulator.faults.stall = False
    events = [reply.event async for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id))]
    assert events[-1].HasField("completed") and len(events[-1].completed.outputs) == 1


async def test_a_prompt_the_backend_forgot_during_the_restart_fails_with_a_reason(
    service_process, simulator: Simulator
) -> None:
    simulator.faults.stall = True
    service, stub, _ = await service_process()
    run = (await stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=workflow(steps=2, seconds=0.1))))).run
    await service.kill()
    async with aiohttp.ClientSession() as http:  # the backend restarts too: its queue is gone
        async with http.post(f"{simulator.comfy_url}/queue", json={"clear": True}) as resp:
            assert resp.status == 200
    _, stub, _ = await service_process()
    events = [reply.event async for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id))]
    assert events[-1].failed.code == pb.FAILURE_CODE_PROMPT_LOST
    assert ((await stub.GetRun(pb.GetRunRequest(run_id=run.run_id))).run).status == pb.RUN_STATUS_FAILED
