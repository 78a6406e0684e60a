"""Starting the simulator (``benchmarks.simproc``) and the service (``python -m generation_service``) as
processes of their own, so each one's CPU and memory can be read from /proc."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from benchmarks.common import PROCESSES, free_port, wait_for_file


@dataclass
class Sim:
    proc: subprocess.Popen[bytes]
    url: str
    frames_file: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def frames(self) -> list[tuple[str, str, int, int]]:
        """The frame stamps recorded since the last call (asks the process to write them)."""
        self.frames_file.unlink(missing_ok=True)
        os.kill(self.proc.pid, signal.SIGUSR1)
        text = wait_for_file(self.frames_file, 60, self.proc)
        return [tuple(json.loads(line)) for line in text.splitlines() if line]

    def release(self) -> None:
        """Unstall the queue (``--stalled``)."""
        os.kill(self.proc.pid, signal.SIGUSR2)

    def stop(self) -> None:
        PROCESSES.stop(self.proc)


def start_sim(work: Path, name: str, parallel: int = 1, stalled: bool = False, previews: bool = False) -> Sim:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    ready = folder / "ready.json"
    args = ["--data-dir", str(folder / "comfy"), "--ready-file", str(ready), "--frames-file", str(folder / "frames")]
    args += ["--parallel", str(parallel)] + (["--stalled"] if stalled else [])
    args += ["--preview-method", "taesd"] if previews else []
    proc = PROCESSES.python("benchmarks.simproc", *args, stderr=(folder / "sim.log").open("wb"))
    info = json.loads(wait_for_file(ready, 60, proc))
    return Sim(proc, info["url"], folder / "frames")


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    target: str
    runs_dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        PROCESSES.stop(self.proc)


def start_service(work: Path, name: str, backend_url: str, runs_dir: Path | None = None, **settings: Any) -> Service:
    """The service on a free port, its runs in ``runs_dir`` (default: its own folder's ``runs``); each
    setting ``key=value`` becomes ``--key value``."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    runs = runs_dir or folder / "runs"
    args = ["--backend-url", backend_url, "--runs-dir", str(runs), "--listen", f"127.0.0.1:{port}"]
    args += ["--log-level", "WARNING", "--media-base-url", "http://127.0.0.1:8080"]
    for key, value in settings.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    proc = PROCESSES.python("generation_service", *args, stderr=(folder / "service.log").open("wb"))
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited ({proc.returncode}); see {folder / 'service.log'}")
        try:
            with grpc.insecure_channel(target) as ch:
                grpc.channel_ready_future(ch).result(timeout=1)
            break
        except grpc.FutureTimeoutError:
            if time.monotonic() > deadline:
                raise
    return Service(proc, target, runs)


@dataclass
class Redis:
    proc: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        PROCESSES.stop(self.proc)


def start_redis(work: Path, name: str) -> Redis:
    """Debian's redis-server on a free loopback port, append-only file in its folder (fsync every second,
    Redis's default), no snapshots."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("needs redis-server (apt-get install redis-server; `make test` installs it)")
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "redis.log"
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", ""]
    args += ["--appendonly", "yes", "--daemonize", "no", "--protected-mode", "no", "--logfile", str(log)]
    proc = PROCESSES.start(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (log.exists() and "Ready to accept connections" in log.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            PROCESSES.stop(proc)
            raise RuntimeError(f"redis-server did not start; see {log}")
        time.sleep(0.05)
    return Redis(proc, f"redis://127.0.0.1:{port}/0")
