"""make demo-cluster: Redis, three service replicas on one runs dir and two simulated backends on free
loopback ports. A run is started on one replica and watched on another; its owner is killed mid-run and
another replica takes the run over; the run completes and its output is fetched back from the gateway.
Everything started here is stopped on success, failure and Ctrl-C."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import redis
from demo import check_output, exit_with, free_port, grpc_serving, http_ok, processes, start, wait_ready

from comfygen.v1 import generation_pb2 as pb
from genctl.output import ProgressView
from generation_client import AsyncGenerationClient

REPO = Path(__file__).resolve().parent.parent
TAKEOVER_S = 5.0  # shorter than the default 15 s, to keep the demo short


def workflow(work: Path) -> Path:
    """The shipped image workflow, with a sampler slow enough to kill its owner in the middle."""
    graph = json.loads((REPO / "comfy_simulator" / "workflows" / "image.json").read_text())
    graph["2"]["inputs"].update(steps=40, seconds=12)
    path = work / "slow-image.json"
    path.write_text(json.dumps(graph))
    return path


def owner(runs: Path, run_id: str) -> str:
    try:
        return str(json.loads((runs / run_id / ".owner.json").read_text())["replica"])
    except (OSError, ValueError, KeyError):
        return ""


async def scenario(
    targets: list[str], runs: Path, work: Path, kill_owner: Callable[[], None]
) -> tuple[str, list[pb.Output]]:
    async with (
        AsyncGenerationClient(targets[0]) as first,
        AsyncGenerationClient(targets[1]) as second,
        AsyncGenerationClient(targets[2]) as third,
    ):
        run = await first.submit(workflow=workflow(work))
        print(f"== run {run.run_id} started on replica-1, which owns it; watched on replica-2", file=sys.stderr)
        view = ProgressView(sys.stderr, io.StringIO())
        killed_at = None
        last = None
        async for event in second.watch(run.run_id):
            view.show(event)
            last = event
            if killed_at is None and event.HasField("node_progress") and event.node_progress.value >= 8:
                kill_owner()
                killed_at = time.monotonic()
                print("\n== replica-1 killed (SIGKILL) mid-run; replica-2 keeps watching", file=sys.stderr)
                while not (taker := owner(runs, run.run_id)) or taker == "replica-1":
                    await asyncio.sleep(0.1)
                took = time.monotonic() - killed_at
                print(f"== {taker} took the run over after {took:.1f} s (bound {TAKEOVER_S:g} s)", file=sys.stderr)
        if last is None or not last.HasField("completed"):
            raise RuntimeError("the run did not complete")
        got = await third.get(run.run_id)
        status = pb.RunStatus.Name(got.status).removeprefix("RUN_STATUS_").lower()
        print(f"== replica-3 reports the run {status}, {len(got.outputs)} output(s)", file=sys.stderr)
        return run.run_id, list(last.completed.outputs)


def main() -> int:
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server is not installed (make system-deps installs Debian's redis-server)")
    work = Path(tempfile.mkdtemp(prefix="generation-cluster-demo-"))
    runs = work / "runs"
    runs.mkdir()
    redis_port, gateway_port = free_port(), free_port()
    sims = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    targets = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    gateway = f"http://127.0.0.1:{gateway_port}"
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    print(f"demo folder {work}\n  redis     {redis_url}\n  backends  {', '.join(sims)}")
    print(f"  replicas  {', '.join(targets)}\n  gateway   {gateway}\n")
    with processes() as started:
        (work / "redis").mkdir()
        redis_args = ["--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(work / "redis")]
        start(started, work, "redis-server", *redis_args, "--appendonly", "yes", "--save", "")
        for i, url in enumerate(sims):
            start(
                started,
                work,
                "comfy_simulator",
                "--listen",
                url.removeprefix("http://"),
                "--data-dir",
                str(work / f"comfy{i}"),
            )
        start(started, work, "media_gateway", "--runs-dir", str(runs), "--listen", f"127.0.0.1:{gateway_port}")
        wait_ready(started, {"redis": lambda: bool(redis.Redis.from_url(redis_url).ping())})
        replicas = []
        for i, target in enumerate(targets):
            name = f"replica-{i + 1}"
            args = ["--redis-url", redis_url, "--replica-name", name, "--takeover-seconds", str(TAKEOVER_S)]
            args += ["--backend-url", ",".join(sims), "--runs-dir", str(runs), "--listen", target]
            start(started, work, "generation_service", *args, "--media-base-url", gateway, log_name=name)
            replicas.append(started[-1][1])
        checks: dict[str, Callable[[], bool]] = {f"backend {u}": partial(http_ok, f"{u}/system_stats") for u in sims}
        checks.update({f"replica {t}": partial(grpc_serving, t) for t in targets})
        checks["gateway"] = lambda: http_ok(f"{gateway}/healthz")
        wait_ready(started, checks)
        run_id, outputs = asyncio.run(scenario(targets, runs, work, replicas[0].kill))
        for output in outputs:
            check_output(output)
        print(f"  player page: {gateway}/runs/{run_id}\n")
    print(json.dumps({"result": "ok", "runs_dir": str(runs)}))
    return 0


if __name__ == "__main__":
    exit_with(main)
