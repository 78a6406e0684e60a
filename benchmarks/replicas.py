"""Scenario 6: several service replicas sharing one Redis and one runs dir (replica mode).

a) The 2b load (W ``WatchRun`` watchers on R running runs) spread over three replicas: runs submitted
   round-robin to them (the one a run is submitted to owns it), watchers round-robin over them, so most
   watchers follow a run another replica owns (its events come through Redis). The baseline, in the same
   run and alternating with it, is one service process without Redis under the same load. CPU is counted
   while the events are delivered: the three replicas' sum, and Redis's separately.
b) Takeover after SIGKILL: three replicas, two simulated backends. Each trial submits a long run to a
   replica (which owns it), waits for its first ``node_progress`` (seen by a watcher on another replica),
   SIGKILLs the owner and times how long until the run folder's ``.owner.json`` names another replica;
   then cancels the run (through a survivor), checks the watcher saw one continuous run, and starts a
   replacement replica under a new name for the next trial.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from benchmarks.common import PROCESSES, Row, load_window, percentile
from benchmarks.stack import Redis, Service, Sim, start_redis, start_service, start_sim
from benchmarks.streams import (
    latencies_ms,
    left_out,
    merge_errors,
    phased_workflows,
    sampler_workflow,
    submit_runs,
    watch_case,
)
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc

SCENARIO = "6 replicas"
REPLICAS = 3
TERMINAL = ("completed", "failed", "cancelled")


# -- a) watchers spread over replicas ----------------------------------------------------------------


def _load_case(
    work: Path, tag: str, replicas: int, base: dict[str, Any], sizes: tuple[int, int, float], procs: int
) -> dict[str, Any]:
    """One case of the 2b load: ``replicas`` = 0 is one service process without Redis."""
    runs, steps, seconds = sizes
    sim: Sim = start_sim(work, f"{tag}-sim", parallel=runs + 10, stalled=True)
    redis: Redis | None = None
    services: list[Service] = []
    try:
        limit = max(1000, runs + 10)
        if replicas == 0:
            services.append(start_service(work, f"{tag}-service", sim.url, max_runs_in_flight=limit))
        else:
            redis = start_redis(work, f"{tag}-redis")
            shared = work / f"{tag}-runs"
            for k in range(replicas):
                name = f"{tag}-replica-{k + 1}"
                settings = {"redis_url": redis.url, "replica_name": name, "max_runs_in_flight": limit}
                services.append(start_service(work, name, sim.url, runs_dir=shared, **settings))
        targets = [s.target for s in services]
        run_ids = submit_runs(targets, phased_workflows(runs, steps, seconds))
        spec = dict(base, mode="watch", targets=targets, run_ids=run_ids)
        extra = [redis.pid] if redis else []
        d = watch_case(work, tag, [s.pid for s in services], spec, procs, sim.release, seconds * 6 + 180, extra)
        frames = sim.frames()
    finally:
        for service in services:
            service.stop()
        if redis is not None:
            redis.stop()
        sim.stop()
    results = d["results"]
    events = max(1, d["live_events"])
    lat = latencies_ms(results, frames)
    return {
        "lost": sum(r["streams"] - r["terminal"] for r in results),
        "left_out": left_out(results, services[0].runs_dir),
        "errors": merge_errors(results),
        "events": d["live_events"],
        "cpu_us": d["cpu"] / events * 1e6,
        "split_us": [c / events * 1e6 for c in d["cpus"]],
        "redis_us": sum(d["extra_cpus"]) / events * 1e6,
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "peak": max(d["peaks"]),
        "opened_s": d["opened_s"],
        "load": d["window"].foreign_cores,
    }


def _spread(values: Sequence[float]) -> str:
    shown = ", ".join(f"{v:.1f}" for v in values)
    return f"[{shown}]" if len(values) > 1 else shown


def watchers(
    work: Path, watchers: int, runs: int, steps: int, seconds: float, procs: int, channels: int, repeats: int
) -> list[Row]:
    base = {"streams": watchers, "channels": channels, "runs": runs}
    single: list[dict[str, Any]] = []
    spread: list[dict[str, Any]] = []
    for k in range(max(1, repeats)):
        single.append(_load_case(work, f"single-{k}", 0, base, (runs, steps, seconds), procs))
        spread.append(_load_case(work, f"replicas-{k}", REPLICAS, base, (runs, steps, seconds), procs))

    def med(cases: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(c[key] for c in cases))

    case = f"{watchers} watchers on {runs} runs x {steps} progress / {seconds:g} s over {REPLICAS} replicas"
    case += f" vs 1 process, {procs} client procs, median of {len(spread)}"
    load = max(c["load"] for c in single + spread)
    lost_events = sum(c["left_out"][1] for c in (*spread, *single))  # only progress may be left out
    lost = sum(c["lost"] for c in spread) + lost_events
    lost_single = sum(c["lost"] for c in single)
    cpu, cpu_single = med(spread, "cpu_us"), med(single, "cpu_us")
    redis = med(spread, "redis_us")
    per_replica = [statistics.median(c["split_us"][k] for c in spread) for k in range(REPLICAS)]
    errors = {k: v for c in spread for k, v in c["errors"].items()}
    errors_single = {k: v for c in single for k, v in c["errors"].items()}
    return [
        Row(
            SCENARIO,
            case,
            "streams lost",
            float(lost),
            float(lost_single),
            "",
            "0",
            lost == 0,
            load,
            f"progress coalesced {sum(c['left_out'][0] for c in spread)} "
            f"(1 process: {sum(c['left_out'][0] for c in single)}), other events lost {lost_events}; "
            f"errors: {errors or 'none'} (1 process: {errors_single or 'none'})",
        ),
        Row(
            SCENARIO,
            case,
            "live events delivered",
            med(spread, "events"),
            med(single, "events"),
            "",
            "",
            None,
            load,
            f"replicas {_spread([c['events'] for c in spread])}, 1 process {_spread([c['events'] for c in single])}",
        ),
        Row(
            SCENARIO,
            case,
            "replicas' CPU per delivered event (sum of 3)",
            cpu,
            cpu_single,
            "us",
            "ratio <= 1.5",
            cpu <= 1.5 * cpu_single,
            load,
            f"replicas {_spread([c['cpu_us'] for c in spread])}, 1 process {_spread([c['cpu_us'] for c in single])}; "
            f"per replica {' + '.join(f'{v:.1f}' for v in per_replica)}",
        ),
        Row(
            SCENARIO,
            case,
            "Redis CPU per delivered event",
            redis,
            None,
            "us",
            "",
            None,
            load,
            f"replicas + Redis: {cpu + redis:.1f} us, {(cpu + redis) / cpu_single:.2f}x the single process",
        ),
        Row(
            SCENARIO,
            case,
            "event latency p50",
            med(spread, "p50"),
            med(single, "p50"),
            "ms",
            "",
            None,
            load,
            "backend frame -> watcher",
        ),
        Row(
            SCENARIO,
            case,
            "event latency p99",
            med(spread, "p99"),
            med(single, "p99"),
            "ms",
            "",
            None,
            load,
            f"replicas {_spread([c['p99'] for c in spread])}, 1 process {_spread([c['p99'] for c in single])}",
        ),
        Row(
            SCENARIO,
            case,
            "peak RSS (largest replica)",
            med(spread, "peak"),
            med(single, "peak"),
            "MB",
            "",
            None,
            load,
            f"all streams open after {med(spread, 'opened_s'):.1f} s (1 process {med(single, 'opened_s'):.1f} s)",
        ),
    ]


# -- b) takeover after SIGKILL -----------------------------------------------------------------------


def _owner(runs_dir: Path, run_id: str) -> str:
    """The replica ``.owner.json`` names, or "" while it is missing or being replaced."""
    try:
        return str(json.loads((runs_dir / run_id / ".owner.json").read_text())["replica"])
    except (OSError, ValueError, KeyError):
        return ""


class _Cluster:
    def __init__(self, work: Path, redis: Redis, sims: list[Sim], takeover_s: float) -> None:
        self.work = work
        self.redis = redis
        self.backends = ",".join(s.url for s in sims)
        self.takeover_s = takeover_s
        self.runs_dir = work / "takeover-runs"
        self.replicas: list[tuple[str, Service]] = []
        self.started = 0

    def start_replica(self) -> None:
        self.started += 1
        name = f"replica-{self.started}"
        settings = {"redis_url": self.redis.url, "replica_name": name, "takeover_seconds": self.takeover_s}
        service = start_service(self.work, f"takeover-{name}", self.backends, runs_dir=self.runs_dir, **settings)
        self.replicas.append((name, service))

    def stop(self) -> None:
        for _, service in self.replicas:
            service.stop()


async def _read_until(call: Any, seen: list[pb.RunEvent], kinds: tuple[str, ...]) -> None:
    while True:
        reply = await call.read()
        if reply is grpc.aio.EOF:
            raise RuntimeError(f"the watch ended after {len(seen)} events, before any of {kinds}")
        event = reply.event
        seen.append(event)
        if event.WhichOneof("kind") in kinds:
            return


def _continuous(events: list[pb.RunEvent]) -> bool:
    """One run: seq rising from 1, a jump only to a ``node_progress`` (the newer progress a watcher that
    fell behind gets instead of the ones it replaced), one terminal event, last."""
    steps = zip(events, events[1:], strict=False)
    rising = all(b.seq == a.seq + 1 or (b.seq > a.seq and b.WhichOneof("kind") == "node_progress") for a, b in steps)
    terminal = [k for k, e in enumerate(events) if e.WhichOneof("kind") in TERMINAL]
    return bool(events) and events[0].seq == 1 and rising and terminal == [len(events) - 1]


async def _trial(c: _Cluster, steps: int, seconds: float) -> dict[str, Any]:
    (victim, owner), (_, survivor) = c.replicas[0], c.replicas[1]
    async with grpc.aio.insecure_channel(owner.target) as och, grpc.aio.insecure_channel(survivor.target) as sch:
        spec = pb.RunSpec(workflow_json=sampler_workflow(steps, seconds), workflow_name="takeover")
        run = (await pb_grpc.GenerationServiceStub(och).Submit(pb.SubmitRequest(spec=spec))).run
        first_owner = _owner(c.runs_dir, run.run_id)
        stub = pb_grpc.GenerationServiceStub(sch)
        call = stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id))
        seen: list[pb.RunEvent] = []
        await asyncio.wait_for(_read_until(call, seen, ("node_progress",)), 60)
        killed = time.monotonic()
        await asyncio.to_thread(PROCESSES.stop, owner.proc, signal.SIGKILL)
        c.replicas.pop(0)
        taken: float | None = None
        new_owner = ""
        while time.monotonic() - killed < c.takeover_s + 30:
            new_owner = _owner(c.runs_dir, run.run_id)
            if new_owner and new_owner != victim:
                taken = time.monotonic() - killed
                break
            await asyncio.sleep(0.02)
        # Cancelled through the replica that took the run over (the survivor when none did in time).
        canceller = next((s for n, s in c.replicas if n == new_owner), survivor)
        async with grpc.aio.insecure_channel(canceller.target) as cch:
            cancel = pb.CancelRunRequest(run_id=run.run_id, reason="takeover trial done")
            await pb_grpc.GenerationServiceStub(cch).CancelRun(cancel)
        await asyncio.wait_for(_read_until(call, seen, TERMINAL), 60)
        call.cancel()
    await asyncio.to_thread(c.start_replica)
    return {"taken": taken, "victim": victim, "first_owner": first_owner, "new_owner": new_owner, "seen": seen}


async def _trials(c: _Cluster, trials: int, steps: int, seconds: float) -> list[dict[str, Any]]:
    out = []
    for _ in range(trials):
        try:
            out.append(await _trial(c, steps, seconds))
        except (grpc.aio.AioRpcError, RuntimeError, TimeoutError) as exc:  # reported, not hidden
            out.append({"taken": None, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            while len(c.replicas) < REPLICAS:
                await asyncio.to_thread(c.start_replica)
    return out


def takeover(work: Path, trials: int, takeover_s: float) -> list[Row]:
    redis = start_redis(work, "takeover-redis")
    sims: list[Sim] = []
    cluster: _Cluster | None = None
    # A run that outlasts the takeover: a sampler of 2 steps a second for 4 bounds plus half a minute.
    seconds = 4 * takeover_s + 30
    steps = int(seconds * 2)
    try:
        # One prompt at a time, as ComfyUI: the simulator's parallel mode ignores interrupts (a cancel would
        # wait for the service's interrupt timeout); each trial's run is cancelled before the next.
        sims = [start_sim(work, f"takeover-sim-{k}") for k in range(2)]
        cluster = _Cluster(work, redis, sims, takeover_s)
        for _ in range(REPLICAS):
            cluster.start_replica()
        with load_window() as window:
            results = asyncio.run(_trials(cluster, trials, steps, seconds))
    finally:
        if cluster is not None:
            cluster.stop()
        for sim in sims:
            sim.stop()
        redis.stop()
    times = [r["taken"] for r in results if r["taken"] is not None]
    failed = len(results) - len(times)
    errors = sorted({r["error"] for r in results if "error" in r})
    bound = takeover_s + 2
    median = statistics.median(times) if times else float("nan")
    worst = max(times) if times and not failed else float("inf")
    not_owner = sum(1 for r in results if "error" not in r and r["first_owner"] != r["victim"])
    continuous = sum(1 for r in results if "error" not in r and _continuous(r["seen"]))
    case = f"SIGKILL of a run's owner, 3 replicas, 2 backends, --takeover-seconds {takeover_s:g}, {len(results)} trials"
    load = window.foreign_cores
    note = f"trials (s): {', '.join(f'{t:.1f}' for t in times)}"
    note += f"; {failed} not taken over within the bound + 30 s" if failed else ""
    note += f"; errors: {errors}" if errors else ""
    note += f"; {not_owner} runs not first owned by the replica they were submitted to" if not_owner else ""
    return [
        Row(SCENARIO, case, "takeover time median", median, None, "s", f"<= {bound:g} s", median <= bound, load, ""),
        Row(SCENARIO, case, "takeover time max", worst, None, "s", f"<= {bound:g} s", worst <= bound, load, note),
        Row(
            SCENARIO,
            case,
            "watchers (on a survivor) seeing one continuous run",
            float(continuous),
            None,
            "",
            f"{len(results)}",
            continuous == len(results),
            load,
            "seq rising (jumps only to newer progress), one terminal event (the cancel after the takeover)",
        ),
    ]


def run(work: Path, sizes: dict[str, Any]) -> list[Row]:
    """Both parts at the given sizes: the 2b load's (``watchers`` ... ``watch_channels``) repeated, then takeover."""
    load = (
        "watchers",
        "watch_runs",
        "watch_steps",
        "watch_seconds",
        "watch_procs",
        "watch_channels",
        "replica_repeats",
    )
    rows = watchers(work, *(sizes[k] for k in load))
    return rows + takeover(work, sizes["takeover_trials"], sizes["takeover_seconds"])
