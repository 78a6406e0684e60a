"""The client's own tests: the real simulator, service and gateway run as processes of the project's
Python (STACK_PYTHON, default this one), so that these tests also run from a venv that holds only the
client, at its declared minimum versions (`make test-client-floors`)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

STACK_PYTHON = os.environ.get("STACK_PYTHON", sys.executable)
WORKFLOWS = Path(__file__).resolve().parents[2] / "comfy_simulator" / "workflows"  # the simulator's fixtures
READY_TIMEOUT_S = 60.0


@dataclass
class Service:
    target: str
    gateway_url: str
    runs_dir: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(log: Path, module: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([STACK_PYTHON, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Polls ``url`` until it answers 200 (bounded): a process's port opens some time after it starts."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Simulator, service and gateway. The service is ready for calls with wait_for_ready=True (the
    clients' first call waits for its port)."""
    work = tmp_path_factory.mktemp("stack")
    runs = work / "runs"
    runs.mkdir()
    sim, grpc_port, gateway_port = free_port(), free_port(), free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    with contextlib.ExitStack() as stack:
        sim_log = work / "simulator.log"
        sim_proc = stack.enter_context(
            process(sim_log, "comfy_simulator", "--listen", f"127.0.0.1:{sim}", "--data-dir", str(work / "comfy"))
        )
        wait_http(f"http://127.0.0.1:{sim}/system_stats", sim_proc, sim_log)
        args = ("--backend-url", f"http://127.0.0.1:{sim}", "--runs-dir", str(runs), "--media-base-url", gateway_url)
        stack.enter_context(
            process(work / "service.log", "generation_service", *args, "--listen", f"127.0.0.1:{grpc_port}")
        )
        gateway_log = work / "gateway.log"
        gateway = stack.enter_context(
            process(gateway_log, "media_gateway", "--runs-dir", str(runs), "--listen", f"127.0.0.1:{gateway_port}")
        )
        wait_http(f"{gateway_url}/healthz", gateway, gateway_log)
        yield Service(f"127.0.0.1:{grpc_port}", gateway_url, runs)
