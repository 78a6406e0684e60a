"""Parts of the tests that run in processes of their own, so that a test can SIGKILL, SIGSTOP and restart
them: simulators, service replicas and a Redis server."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from stack_helpers import REPO

READY = re.compile(r"comfy_simulator ready: comfy_url=(\S+)")


@dataclass
class SimProcess:
    """A simulator in a process of its own, so that a test can SIGKILL it and start it again."""

    proc: asyncio.subprocess.Process
    url: str
    drain: asyncio.Task[None]  # reads its log, so that a full pipe never blocks it

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


async def start_simulator(data_dir: Path, port: int, *flags: str) -> SimProcess:
    args = ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), "--log-level", "INFO", *flags]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfy_simulator", *args, stderr=asyncio.subprocess.PIPE, cwd=REPO
    )
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "the simulator exited before it was ready"
            if match := READY.search(line):
                break
    return SimProcess(proc, match.group(1), asyncio.create_task(drain(proc.stderr)))


async def drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """Debian's redis-server on a free loopback port, its append-only file in ``data_dir``: stopped and
    started again, it comes back with what it had."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is missing: `make test` installs it (scripts/system-deps.sh)"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no", "--protected-mode", "no"]
        self.proc = await asyncio.create_subprocess_exec(
            server, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                assert line, "redis-server exited before it was ready"
                if "Ready to accept connections" in line:
                    break
        self._drain = asyncio.create_task(drain(self.proc.stdout))

    async def stop(self) -> None:
        """SIGKILL: whatever it acknowledged is in its append-only file (fsync always)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            await self._drain


LISTENING = re.compile(r"generation service listening on [\d.]+:(\d+)")


@dataclass
class ServiceProcess:
    """``python -m generation_service`` in a child process, on a port it picked itself."""

    proc: asyncio.subprocess.Process
    port: int
    log: list[str]
    reader: asyncio.Task[None]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        await self.reader

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            await self.proc.wait()
        await self.reader


async def start_service(*flags: str) -> ServiceProcess:
    """A service process with these flags (and --listen on a free port); returns once it listens."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "generation_service",
        "--listen",
        "127.0.0.1:0",
        *flags,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stderr is not None
    log: list[str] = []
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "the service exited before it listened:\n" + "".join(log[-20:])
            log.append(line)
            if match := LISTENING.search(line):
                break
    return ServiceProcess(proc, int(match.group(1)), log, asyncio.create_task(_keep_log(proc.stderr, log)))


async def _keep_log(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode())
