"""make demo: simulator + generation service + media gateway on free loopback ports, one run of each
media kind with live progress, every output fetched back from the gateway and checked. Everything
started here is stopped on success, failure and Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from comfygen.v1 import generation_pb2 as pb
from genctl.output import ProgressView
from generation_client import AsyncGenerationClient

REPO = Path(__file__).resolve().parent.parent
JOBS: list[tuple[str, dict[str, Any]]] = [
    ("image workflow", {"workflow": REPO / "comfy_simulator" / "workflows" / "image.json"}),
    ("audio workflow", {"workflow": REPO / "workflows" / "audio.json"}),
    ("video workflow", {"workflow": REPO / "comfy_simulator" / "workflows" / "video.json"}),
    (
        "template ace_step_instrumental: 12 s of music",
        {
            "template": "ace_step_instrumental",
            "params": {"tags": 'calm piano, "rainy" evening', "seconds": 12, "steps": 10},
        },
    ),
]
READY_TIMEOUT_S = 60.0

Started = list[tuple[str, "subprocess.Popen[bytes]", Path]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def processes() -> Iterator[Started]:
    started: Started = []
    try:
        yield started
    finally:
        for _, proc, _ in started:
            proc.terminate()
        for name, proc, _ in started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in 10 s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()


def start(started: Started, work: Path, name: str, *args: str, log_name: str = "") -> None:
    """Start the Python module ``name`` (or, for a name with a dash, that program), logging to the demo
    folder."""
    log = work / f"{log_name or name}.log"
    command = [name] if "-" in name else [sys.executable, "-m", name]
    # Started in the demo folder: nothing needs the checkout as working directory (the templates are
    # package data).
    proc = subprocess.Popen([*command, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=work)
    started.append((log_name or name, proc, log))


def wait_ready(started: Started, checks: dict[str, Callable[[], bool]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = dict(checks)
    while pending:
        for name, proc, log in started:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        for name, check in list(pending.items()):
            with contextlib.suppress(Exception):
                if check():
                    del pending[name]
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {READY_TIMEOUT_S:.0f} s: {', '.join(pending)}")
        time.sleep(0.2)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


def grpc_serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the published stubs omit the stub's methods
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def run_job(target: str, options: dict[str, Any]) -> tuple[str, list[pb.Output]]:
    """One run through the client library, with live progress; its run id and outputs."""
    view = ProgressView(sys.stderr, io.StringIO())  # the URLs are printed once checked
    last = None
    async with AsyncGenerationClient(target) as client:
        async for event in client.generate(**options):
            view.show(event)
            last = event
    if last is None or not last.HasField("completed"):
        raise RuntimeError("the run did not complete")
    return last.run_id, list(last.completed.outputs)


def check_output(output: pb.Output) -> None:
    with urllib.request.urlopen(output.url, timeout=30) as response:
        body = response.read()
        content_type = response.headers["Content-Type"]
    if content_type != output.mime:
        raise RuntimeError(f"{output.url}: Content-Type {content_type!r}, expected {output.mime!r}")
    if hashlib.sha256(body).hexdigest() != output.sha256:
        raise RuntimeError(f"{output.url}: bytes differ from the stored output's sha256")
    print(f"  ok  {content_type:<11} {len(body):>9} bytes  {output.url}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="generation-demo-"))
    sim_port, grpc_port, gateway_port = free_port(), free_port(), free_port()
    backend = f"http://127.0.0.1:{sim_port}/ComfyBackendDirect"  # through the SwarmUI-style proxy path
    gateway = f"http://127.0.0.1:{gateway_port}"
    target = f"127.0.0.1:{grpc_port}"
    print(f"demo folder {work}\n  simulator {backend}\n  service   {target}\n  gateway   {gateway}\n")
    with processes() as started:
        start(started, work, "comfy_simulator", "--listen", f"127.0.0.1:{sim_port}", "--data-dir", str(work / "comfy"))
        (work / "runs").mkdir()
        start(started, work, "media_gateway", "--runs-dir", str(work / "runs"), "--listen", f"127.0.0.1:{gateway_port}")
        start(
            started,
            work,
            "generation_service",
            "--backend-url",
            backend,
            "--runs-dir",
            str(work / "runs"),
            "--listen",
            target,
            "--media-base-url",
            gateway,
        )
        wait_ready(
            started,
            {
                "simulator": lambda: http_ok(f"{backend}/system_stats"),
                "gateway": lambda: http_ok(f"{gateway}/healthz"),
                "service": lambda: grpc_serving(target),
            },
        )
        for title, options in JOBS:
            print(f"== {title}", file=sys.stderr)
            run_id, outputs = asyncio.run(run_job(target, options))
            for output in outputs:
                check_output(output)
            print(f"  player page: {gateway}/runs/{run_id}\n")
    print(json.dumps({"result": "ok", "runs_dir": str(work / "runs")}))
    return 0


def exit_with(main: Callable[[], int]) -> NoReturn:
    """Run a demo's ``main`` and exit: 0, 1 with the reason, or 130 on Ctrl-C (everything stopped)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    exit_with(main)
