"""``python -m media_gateway.bench``: uvicorn vs granian serving outputs through the real gateway, measured with wrk.

Makes a throw-away run storage (a 64 KiB PNG, an 8 MiB MP4; random bytes, the gateway does not decode),
starts ``python -m media_gateway --server NAME`` for each server in turn and runs Debian's ``wrk`` (one
thread) against it: full GETs and a 1 MiB Range of the 8 MiB file. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from comfy_generation.runstore import RunStore
from comfy_generation.runstore.builder import write_finished_run

CASES = [  # (label, file, extra wrk arguments)
    ("64 KiB png, c16", "image", []),
    ("8 MiB mp4, c16", "video", []),
    ("Range 1 MiB of 8 MiB, c16", "video", ["-H", "Range: bytes=1048576-2097151"]),
]


def make_run(root: Path, kind: str, ext: str, size: int) -> str:
    """A finished run with one output of ``size`` random bytes named ``output.<ext>`` (a ``kind`` file)."""
    content = b"\0" + os.urandom(size - 1)  # a leading zero byte matches no format's magic: the name decides
    run_id = write_finished_run(root, [(content, f"output.{ext}")])
    assert RunStore(root).read_record(run_id).outputs()[0].type == f"output_{kind}"
    return run_id


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _gateway(server: str, runs: Path) -> Iterator[str]:
    port = _free_port()
    args = ["--server", server, "--runs-dir", str(runs), "--listen", f"127.0.0.1:{port}", "--log-level", "warning"]
    proc = subprocess.Popen([sys.executable, "-m", "media_gateway", *args], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):  # a benchmark tool may poll; the tests never do
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{base}/healthz", timeout=1).close()
                break
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _wrk(url: str, seconds: int, extra: list[str]) -> tuple[float, float]:
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", *extra, url], capture_output=True, text=True, check=True
    ).stdout
    req = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out).groups()  # type: ignore[union-attr]
    mib = float(value) * {"B": 2**-20, "KB": 2**-10, "MB": 1.0, "GB": 1024.0}[unit]
    return req, mib


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m media_gateway.bench", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per case (default 5)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("needs wrk (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        ids = {"image": make_run(runs, "image", "png", 64 * 1024), "video": make_run(runs, "video", "mp4", 8 << 20)}
        print("| case | server | req/s | MiB/s |\n|---|---|---|---|")
        for server in ("uvicorn", "granian"):
            with _gateway(server, runs) as base:
                for label, kind, extra in CASES:
                    req, mib = _wrk(f"{base}/api/media/{kind}/{ids[kind]}", args.seconds, extra)
                    print(f"| {label} | {server} | {req:.0f} | {mib:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
