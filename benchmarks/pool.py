"""Scenario 5, the backend pool: the same sampler runs, all submitted at once, on one simulated backend
and on three of equal speed behind one service; alternated and repeated. The figures are the wall time
until the last run completed (3 backends against 1) and the service's CPU per run (3 against 1: the
difference is what dispatching over a pool costs, probes and sockets of the extra backends included)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks.common import Row, cpu_seconds, load_window
from benchmarks.stack import start_service, start_sim
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc

WORKFLOWS = Path(__file__).resolve().parent.parent / "comfy_simulator" / "workflows"  # SimulatedSampler
REPEATS = 2


def _workflows(runs: int, steps: int, seconds: float) -> list[str]:
    """One workflow per run, each with its own colour: ComfyUI would serve identical nodes from its cache."""
    graph = json.loads((WORKFLOWS / "image.json").read_text())
    graph["2"]["inputs"].update(steps=steps, seconds=seconds)
    workflows = []
    for i in range(runs):
        graph["1"]["inputs"].update(width=16, height=16, color=int(time.time_ns() % 10**6) * 16 + i)
        workflows.append(json.dumps(graph))
    return workflows


async def _all_runs(target: str, workflows: list[str]) -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        stub: Any = pb_grpc.GenerationServiceStub(channel)
        started = time.monotonic()
        submitted = await asyncio.gather(
            *(stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=w))) for w in workflows)
        )

        async def until_done(run_id: str) -> None:
            async for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run_id)):
                event = reply.event
                last = event
            if not last.HasField("completed"):
                raise RuntimeError(f"run {run_id} ended with {last.WhichOneof('kind')}")

        await asyncio.gather(*(until_done(r.run.run_id) for r in submitted))
        return time.monotonic() - started


def _measure(
    work: Path, backends: int, repeat: int, runs: int, steps: int, seconds: float
) -> tuple[float, float, float]:
    """(wall seconds, service CPU ms per run, foreign load) of one round."""
    sims = [start_sim(work, f"pool-{backends}-{repeat}-sim{i}") for i in range(backends)]
    service = start_service(
        work, f"pool-{backends}-{repeat}-service", ",".join(s.url for s in sims), health_check_seconds=1
    )
    try:
        asyncio.run(_all_runs(service.target, _workflows(2, steps, seconds)))  # warm-up: connections, imports
        workflows = _workflows(runs, steps, seconds)
        cpu = cpu_seconds(service.pid)
        with load_window() as window:
            wall = asyncio.run(_all_runs(service.target, workflows))
        return wall, (cpu_seconds(service.pid) - cpu) * 1000 / runs, window.foreign_cores
    finally:
        service.stop()
        for sim in sims:
            sim.stop()


def run(work: Path, runs: int, steps: int, seconds: float) -> list[Row]:
    results: dict[int, list[tuple[float, float, float]]] = {1: [], 3: []}
    for repeat in range(REPEATS):
        for backends in (1, 3):  # alternated, so that a noisy stretch hits both
            results[backends].append(_measure(work, backends, repeat, runs, steps, seconds))
    wall = {n: statistics.median(r[0] for r in results[n]) for n in results}
    cpu = {n: statistics.median(r[1] for r in results[n]) for n in results}
    load = max(r[2] for n in results for r in results[n])
    case = f"{runs} runs of {seconds:g} s, 3 backends vs 1"
    spread = {n: f"{min(r[0] for r in results[n]):.1f}-{max(r[0] for r in results[n]):.1f} s" for n in results}
    overhead = cpu[3] - cpu[1]
    return [
        Row(
            "5 backend pool",
            case,
            "wall time",
            wall[3],
            wall[1],
            "s",
            "<= 0.4x",
            wall[3] <= 0.4 * wall[1],
            load,
            f"median of {REPEATS}; 3: {spread[3]}, 1: {spread[1]}",
        ),
        Row(
            "5 backend pool",
            case,
            "service CPU per run",
            cpu[3],
            cpu[1],
            "ms",
            "+<= 1 ms",
            overhead <= 1.0,
            load,
            f"dispatch over 3 backends costs {overhead:+.2f} ms per run",
        ),
    ]
