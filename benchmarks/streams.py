"""Scenario 2: many concurrent streams.

a) N concurrent ``Generate`` streams, each run a ``SimulatedSampler`` of S steps over T seconds (about S
   progress events per stream). The simulator runs every prompt at once (its opt-in ``parallel_prompts``
   mode: ComfyUI itself runs one prompt at a time) and stamps each progress frame as it leaves; latency is
   frame sent -> the client holding the matching ``node_progress`` event.
b) W concurrent ``WatchRun`` watchers on R running runs (W/R per run) of one service process, against a bare
   grpc.aio echo holding the same W streams and fanning out the same events (R runs x S events over T s).
   Runs are submitted with the simulator's queue stalled; once every watcher holds its stream the queue is
   released (the echo: its emitters start), so the CPU window covers live delivery only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from benchmarks.common import (
    PROCESSES,
    Row,
    RssSampler,
    cpu_seconds,
    load_window,
    percentile,
    profiling,
    wait_for_file,
)
from benchmarks.stack import Sim, start_service, start_sim
from comfy_generation.runstore import RunStore
from comfy_generation.runstore import events as ev
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc


def sampler_workflow(steps: int, seconds: float, phase: float = 0.0) -> str:
    """A sampler of ``steps`` steps over ``seconds`` then a small PNG; with ``phase`` > 0 a one-step sampler
    of that length runs first, so runs released together still send their progress at spread-out times
    (as the echo's emitters do)."""
    graph: dict[str, Any] = {
        "1": {"class_type": "SimulatedSampler", "inputs": {"steps": steps, "seconds": seconds}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench/s"}},
    }
    if phase > 0:
        graph["0"] = {"class_type": "SimulatedSampler", "inputs": {"steps": 1, "seconds": round(phase, 3)}}
        graph["1"]["inputs"]["images"] = ["0", 0]
    return json.dumps(graph)


def start_clients(work: Path, name: str, procs: int, spec: dict[str, Any]) -> list[tuple[Any, Path, Path]]:
    out = []
    per, extra = divmod(spec["streams"], procs)
    for p in range(procs):
        s = dict(spec, streams=per + (1 if p < extra else 0))
        s["ready_file"] = str(work / f"{name}-{p}.ready")
        s["out_file"] = str(work / f"{name}-{p}.out.json")
        spec_file = work / f"{name}-{p}.spec.json"
        spec_file.write_text(json.dumps(s))
        proc = PROCESSES.python("benchmarks.streamclient", str(spec_file), stderr=(work / f"{name}-{p}.log").open("wb"))
        out.append((proc, Path(s["ready_file"]), Path(s["out_file"])))
    return out


def wait_clients(clients: list[tuple[Any, Path, Path]], timeout: float) -> list[dict[str, Any]]:
    results = []
    for proc, _, out in clients:
        proc.wait(timeout=timeout)
        PROCESSES.stop(proc)
        results.append(json.loads(out.read_text()))
    return results


def latencies_ms(results: list[dict[str, Any]], frames: list[tuple[str, str, int, int]]) -> list[float]:
    sent = {(p, n, v): t for p, n, v, t in frames if v >= 0}
    lat = []
    for r in results:
        prompts = {int(k): v for k, v in r["prompts"].items()}
        for pi, node, value, recv in r["progress"]:
            t = sent.get((prompts[pi], node, value))
            if t is not None:
                lat.append((recv - t) / 1e6)
    return lat


def left_out(results: list[dict[str, Any]], runs_dir: Path) -> tuple[int, int]:
    """(progress events coalesced, other events lost) over every stream: the seqs streams did not get,
    looked up in the runs' journals. Only ``node_progress`` may be left out (a newer one replaced it)."""
    lost = 0
    store = RunStore(runs_dir)
    missing: dict[str, set[int]] = {}
    for r in results:
        for run_id, seqs in r["missing"].items():
            missing.setdefault(run_id, set()).update(seqs)
    for run_id, seqs in missing.items():
        journal = {e.seq: e for e in store.read_events(run_id)}
        lost += sum(1 for seq in seqs if not isinstance(journal[seq].body, ev.NodeProgress))
    return sum(r["coalesced"] for r in results), lost


def merge_errors(results: list[dict[str, Any]]) -> dict[str, int]:
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return errors


def generate_streams(work: Path, streams: int, steps: int, seconds: float, channels: int) -> list[Row]:
    sim = start_sim(work, "gen-sim", parallel=streams + 10)
    service = start_service(work, "gen-service", sim.url, max_runs_in_flight=max(1000, streams + 10))
    try:
        rss0 = RssSampler(service.pid)
        spec = {
            "mode": "generate",
            "target": service.target,
            "streams": streams,
            "channels": channels,
            "workflow": sampler_workflow(steps, seconds),
        }
        with load_window() as window, profiling(service.pid, "service-generate"):
            c0 = cpu_seconds(service.pid)
            clients = start_clients(work, "gen", 1, spec)
            results = wait_clients(clients, timeout=seconds * 6 + 120)
            cpu = cpu_seconds(service.pid) - c0
        peak = rss0.stop()
        frames = sim.frames()
    finally:
        service.stop()
        sim.stop()
    coalesced, lost = left_out(results, service.runs_dir)
    lat = latencies_ms(results, frames)
    errors = merge_errors(results)
    n_err = sum(r["streams"] - r["completed"] for r in results)
    progress_frames = sum(1 for f in frames if f[2] >= 0)
    case = f"{streams} Generate streams x {steps} progress / {seconds:g} s"
    load = window.foreign_cores
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    note = (
        f"{len(lat)}/{progress_frames} progress events delivered and matched, {coalesced} coalesced; "
        f"other events lost {lost}; errors: {errors or 'none'}"
    )
    return [
        Row(
            "2a streams",
            case,
            "event latency p50",
            p50,
            None,
            "ms",
            "",
            None,
            load,
            "backend frame sent -> client event",
        ),
        Row("2a streams", case, "event latency p99", p99, None, "ms", "<= 200 ms", p99 <= 200, load, note),
        Row(
            "2a streams",
            case,
            "service peak RSS",
            peak,
            None,
            "MB",
            "<= 300 MB",
            peak <= 300,
            load,
            f"{rss0.start_mb:.0f} MB before",
        ),
        Row(
            "2a streams",
            case,
            "streams not completed / errors / events lost",
            float(n_err + lost),
            None,
            "",
            "0",
            n_err + lost == 0,
            load,
            "",
        ),
        Row(
            "2a streams",
            case,
            "service CPU",
            cpu / window.seconds,
            None,
            "cores",
            "",
            None,
            load,
            f"{cpu * 1e6 / max(1, sum(r['events'] for r in results)):.0f} us per event delivered",
        ),
    ]


def submit_runs(targets: Sequence[str], workflows: list[str], **spec: Any) -> list[str]:
    """Submits workflow k to ``targets[k % len(targets)]``; returns the run ids in order."""
    with contextlib.ExitStack() as stack:
        stubs = [pb_grpc.GenerationServiceStub(stack.enter_context(grpc.insecure_channel(t))) for t in targets]
        specs = [pb.RunSpec(workflow_json=w, workflow_name="watch", **spec) for w in workflows]
        return [stubs[k % len(stubs)].Submit(pb.SubmitRequest(spec=spec)).run.run_id for k, spec in enumerate(specs)]


def phased_workflows(runs: int, steps: int, seconds: float) -> list[str]:
    """The 2b runs: the same phases as the echo's emitters (run r starts r / runs of a step interval late)."""
    return [sampler_workflow(steps, seconds, 0.001 + (r / runs) * (seconds / steps)) for r in range(runs)]


def watch_case(
    work: Path,
    name: str,
    server_pids: Sequence[int],
    spec: dict[str, Any],
    procs: int,
    start: Callable[[], None],
    timeout: float,
    extra_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """Opens ``spec``'s streams from ``procs`` client processes, then ``start()``s the events and measures,
    while they are delivered, the servers' CPU (``cpus``, one per pid, and their sum ``cpu``) and peak RSS
    (``peaks``; ``peak`` is the first server's), and the CPU of ``extra_pids`` (``extra_cpus``)."""
    clients = start_clients(work, name, procs, spec)
    opened = [json.loads(wait_for_file(ready, timeout, proc)) for proc, ready, _ in clients]
    samplers = [RssSampler(pid) for pid in server_pids]
    with contextlib.ExitStack() as stack:
        window = stack.enter_context(load_window())
        for k, pid in enumerate(server_pids):
            stack.enter_context(profiling(pid, name if k == 0 else f"{name}-{k}"))
        pids = [*server_pids, *extra_pids]
        c0 = [cpu_seconds(pid) for pid in pids]
        t0 = time.time_ns()
        start()
        results = wait_clients(clients, timeout)
        cpus = [cpu_seconds(pid) - c for pid, c in zip(pids, c0, strict=True)]
    peaks = [sampler.stop() for sampler in samplers]
    live_events = sum(1 for r in results for t in r["recv_ns"] if t >= t0)
    return {
        "results": results,
        "cpu": sum(cpus[: len(server_pids)]),
        "cpus": cpus[: len(server_pids)],
        "extra_cpus": cpus[len(server_pids) :],
        "live_events": live_events,
        "window": window,
        "peak": peaks[0],
        "peaks": peaks,
        "opened_s": max(o["opened_s"] for o in opened),
        "t0": t0,
    }


def _echo_round(work: Path, tag: str, base: dict[str, Any], steps: int, seconds: float, procs: int) -> dict[str, Any]:
    ready = work / f"{tag}.ready"
    echo = PROCESSES.python(
        "benchmarks.echo",
        "--runs",
        str(base["runs"]),
        "--steps",
        str(steps),
        "--seconds",
        str(seconds),
        "--ready-file",
        str(ready),
        stderr=(work / f"{tag}.log").open("wb"),
    )
    try:
        port = json.loads(wait_for_file(ready, 30, echo))["port"]
        spec = dict(base, mode="echo", target=f"127.0.0.1:{port}")
        d = watch_case(work, tag, [echo.pid], spec, procs, lambda: os.kill(echo.pid, signal.SIGUSR2), seconds * 6 + 180)
    finally:
        PROCESSES.stop(echo)
    d["latency"] = [x / 1e6 for r in d["results"] for x in r["echo_lat_ns"]]
    d["coalesced"], d["lost_events"] = 0, 0
    return d


def _service_round(
    work: Path, tag: str, base: dict[str, Any], steps: int, seconds: float, procs: int
) -> dict[str, Any]:
    runs = base["runs"]
    sim: Sim = start_sim(work, f"{tag}-sim", parallel=runs + 10, stalled=True)
    service = start_service(work, f"{tag}-service", sim.url, max_runs_in_flight=max(1000, runs + 10))
    try:
        run_ids = submit_runs([service.target], phased_workflows(runs, steps, seconds))
        spec = dict(base, mode="watch", target=service.target, run_ids=run_ids)
        d = watch_case(work, tag, [service.pid], spec, procs, sim.release, seconds * 6 + 180)
        frames = sim.frames()
    finally:
        service.stop()
        sim.stop()
    d["latency"] = latencies_ms(d["results"], frames)
    d["coalesced"], d["lost_events"] = left_out(d["results"], service.runs_dir)
    return d


def watchers(
    work: Path, watchers: int, runs: int, steps: int, seconds: float, procs: int, channels: int, repeats: int = 1
) -> list[Row]:
    """The service and the bare echo, alternately ``repeats`` times each; figures are the medians of
    the rounds, with every round's figure in the note."""
    base = {"streams": watchers, "channels": channels, "runs": runs}
    echoes, services = [], []
    for k in range(repeats):
        echoes.append(_echo_round(work, f"echo-{k}", base, steps, seconds, procs))
        services.append(_service_round(work, f"watch-{k}", base, steps, seconds, procs))
    for d in (*echoes, *services):
        d["lost"] = sum(r["streams"] - r["terminal"] for r in d["results"])
        d["errors"] = merge_errors(d["results"])
        d["cpu_us"] = d["cpu"] / max(1, d["live_events"]) * 1e6
        d["p50"], d["p99"] = percentile(d["latency"], 50), percentile(d["latency"], 99)
    case = f"{watchers} watchers on {runs} runs x {steps} progress / {seconds:g} s"
    case += f", {procs} client procs x {channels} conns, median of {repeats}"
    load = max(d["window"].foreign_cores for d in (*echoes, *services))

    def median(rounds: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(d[key] for d in rounds))

    def each(key: str, fmt: str = ".0f") -> str:
        def listed(rounds: list[dict[str, Any]]) -> str:
            return ", ".join(format(d[key], fmt) for d in rounds)

        return f"service {listed(services)}; echo {listed(echoes)}"

    lost = sum(d["lost"] for d in services)
    lost_events = sum(d["lost_events"] for d in services)
    errors = {k: v for d in services for k, v in d["errors"].items()}
    echo_errors = {k: v for d in echoes for k, v in d["errors"].items()}
    p99, echo_p99 = median(services, "p99"), median(echoes, "p99")
    cpu, echo_cpu = median(services, "cpu_us"), median(echoes, "cpu_us")
    delivered = sum(d["live_events"] for d in services)
    coalesced = sum(d["coalesced"] for d in services)
    return [
        Row(
            "2b watchers",
            case,
            "streams lost / other events lost",
            float(lost + lost_events),
            float(sum(d["lost"] for d in echoes)),
            "",
            "0",
            lost + lost_events == 0,
            load,
            f"streams lost {lost}, events other than progress lost {lost_events}; service errors: "
            f"{errors or 'none'}; echo errors: {echo_errors or 'none'}",
        ),
        Row(
            "2b watchers",
            case,
            "event latency p50",
            median(services, "p50"),
            median(echoes, "p50"),
            "ms",
            "",
            None,
            load,
            f"service: backend frame -> watcher; echo: broadcast -> watcher; {each('p50')}",
        ),
        Row(
            "2b watchers",
            case,
            "event latency p99",
            p99,
            echo_p99,
            "ms",
            "ratio <= 2",
            p99 <= 2 * echo_p99,
            load,
            each("p99"),
        ),
        Row(
            "2b watchers",
            case,
            "server CPU per delivered event",
            cpu,
            echo_cpu,
            "us",
            "ratio <= 1",
            cpu <= echo_cpu,
            load,
            f"{each('cpu_us', '.1f')}; service delivered {delivered} live events, coalesced {coalesced} progress "
            f"({coalesced / max(1, delivered + coalesced):.1%}); "
            f"echo delivered {sum(d['live_events'] for d in echoes)}",
        ),
        Row(
            "2b watchers",
            case,
            "server peak RSS",
            median(services, "peak"),
            median(echoes, "peak"),
            "MB",
            "",
            None,
            load,
            f"all streams open after {median(services, 'opened_s'):.1f} s (echo {median(echoes, 'opened_s'):.1f} s)",
        ),
    ]
