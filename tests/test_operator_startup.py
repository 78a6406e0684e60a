"""What an operator starting the processes by hand meets: the gateway started before the runs dir exists
waits for it, and `--help` never shows a secret taken from the environment."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from stack_helpers import REPO

SECRETS = {
    "GENERATION_AUTH_TOKENS": "token-one-7f3a,token-two-9c1d",
    "GENERATION_MEDIA_SIGNING_SECRET": "service-signing-secret-41b2",
    "GENERATION_SWARM_AUTHORIZATION": "Basic swarm-authorization-5e6f",
    "GENERATION_SWARM_TOKEN": "swarm-cookie-token-8a0b",
    "GENERATION_REDIS_URL": "redis://:redis-password-2d4c@redis:6379/0",
    "MEDIA_GATEWAY_SIGNING_SECRET": "gateway-signing-secret-63e9",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_gateway_waits_for_a_runs_dir_that_does_not_exist_yet(tmp_path: Path) -> None:
    runs, port = tmp_path / "runs", free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "media_gateway", "--runs-dir", str(runs), "--listen", f"127.0.0.1:{port}", "--server", "uvicorn"),
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stderr is not None

    async def line_with(text: str) -> str:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()  # type: ignore[union-attr]
            assert line, f"the gateway exited (status {await proc.wait()}) before logging {text!r}"
            if text in line:
                return line

    try:
        waiting = await line_with("does not exist yet")
        assert str(runs) in waiting and "WARNING" in waiting and proc.returncode is None
        runs.mkdir()
        assert str(runs) in await line_with("appeared: starting")
        await line_with("listening on")
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
    finally:
        proc.terminate()
        await proc.wait()


def test_a_runs_dir_that_is_a_file_still_stops_the_gateway(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    done = subprocess.run(
        [sys.executable, "-m", "media_gateway", "--runs-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "not a directory" in done.stderr


def test_help_never_prints_a_secret_from_the_environment() -> None:
    env = {**os.environ, **SECRETS}
    for module in ("generation_service", "media_gateway"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=env, cwd=REPO, timeout=60
        )
        assert done.returncode == 0, done.stderr
        text = done.stdout + done.stderr
        for name, value in SECRETS.items():
            for part in value.replace(",", " ").replace(":", " ").replace("@", " ").split():
                if len(part) > 8:
                    assert part not in text, (module, name)
        assert "--media-signing-secret" in text or "--signing-secret" in text  # the flags are still documented
