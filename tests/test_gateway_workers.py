"""``python -m media_gateway`` on granian with several worker processes on one listening socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway_helpers import png_bytes, write_run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_workers_share_one_socket_and_serve(tmp_path: Path):
    run_id = write_run(tmp_path, [(png_bytes(), "a.png")])
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "media_gateway", "--runs-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}"],
        env={**os.environ, "MEDIA_GATEWAY_WORKERS": "2", "MEDIA_GATEWAY_LOG_LEVEL": "warning"},
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(_children(proc.pid)) < 2 or not _answers(port):  # every worker started, the socket accepts
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)  # polling interval while the workers start
        workers = _children(proc.pid)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            images = [client.get(f"/api/media/image/{run_id}/0", headers={"Connection": "close"}) for _ in range(20)]
        sockets = _listening_inodes(port)
        holders = {w for w in workers if _holds(w, sockets)}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)

    assert len(workers) == 2
    assert len(sockets) == 1 and holders == workers  # one socket, held by both (not one SO_REUSEPORT socket each)
    assert all(r.status_code == 200 and r.content == png_bytes() for r in images)
    assert proc.returncode == 0, stderr.decode()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on ``port`` (from /proc/net/tcp; state 0A is LISTEN)."""
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    return {row[9] for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "0A"}


def _holds(pid: int, inodes: set[str]) -> bool:
    return any(os.readlink(fd) in {f"socket:[{i}]" for i in inodes} for fd in Path(f"/proc/{pid}/fd").iterdir())
