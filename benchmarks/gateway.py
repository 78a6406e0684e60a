"""Scenario 4, the media gateway against nginx, measured with Debian's wrk (one thread, as the gateway's own
``python -m media_gateway.bench`` and the reference bench): 64 KiB image, 8 MiB and 64 MiB videos and a
1 MiB Range seek into the 8 MiB video, at 16 and 64 connections. Systems: nginx serving the files
statically (the baseline, one worker); the gateway alone on granian (its default: a worker per core)
serving the bytes itself; and the deployed setup, the shipped ``deploy/nginx/media-gateway.conf`` (one
worker) with signing on in front of the gateway (front-server mode), fetched both at the file URLs the
service mints there (nginx checks and serves them alone) and at the seed-compatible ``/api/media`` URLs
(one gateway lookup each, then nginx sends the file).

Each case runs every system in turn, three rounds (``REPEATS``), so that a burst of foreign load lands on
all of them alike; a figure is the median of its rounds, with their spread (min-max) in the note.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from benchmarks.common import PROCESSES, Row, load_window, profiling, tree_cpu_seconds
from comfy_generation.runstore import MediaKind, output_url, signed_media_url
from media_gateway.bench import make_run

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "deploy" / "nginx" / "media-gateway.conf"
KiB, MiB = 1024, 1 << 20
FILES = [
    ("64 KiB png", "image", "png", 64 * KiB),
    ("8 MiB mp4", "video", "mp4", 8 * MiB),
    ("64 MiB mp4", "video", "mp4", 64 * MiB),
]
SERVERS = ("nginx", "granian", "nginx files", "nginx+gateway")
REPEATS = 3
SECRET = "bench-secret"


def _port_in_use_wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _gateway(work: Path, runs: Path, server: str, accel: bool) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--server", server, "--runs-dir", str(runs), "--listen", f"127.0.0.1:{port}", "--log-level", "warning"]
    env = None
    if accel:  # the deployed setup: signing on
        args += ["--accel-redirect", "/_runs/"]
        env = {**os.environ, "MEDIA_GATEWAY_SIGNING_SECRET": SECRET}
    log = (work / f"gateway-{server}{'-accel' if accel else ''}.log").open("wb")
    proc = PROCESSES.python("media_gateway", *args, stderr=log, stdout=log, env=env)
    base = f"http://127.0.0.1:{port}"
    _port_in_use_wait(base + "/healthz", proc)
    return proc, base


def _nginx(work: Path, runs: Path, front_gateway_port: int) -> tuple[subprocess.Popen[bytes], str, str]:
    """One nginx (1 worker): a static server for the baseline and the shipped front-server block."""
    static, front = _listener(), _listener()
    text = SHIPPED.read_text()
    for pattern, value in [
        # the three deployment values (the gateway's address, the public port, the runs dir), as the tests do
        (r"(?m)^(\s*)server [\w.\-\[\]:]+:\d+;", f"\\1server 127.0.0.1:{front_gateway_port};"),
        (r"(?m)^(\s*)listen [\w.:\[\]]*\d+;", f"\\1listen 127.0.0.1:{front.getsockname()[1]};"),
        (r"(?m)^(\s*)alias /srv/runs/;", f"\\1alias {runs}/;"),
        (r"(?m)^(\s*)alias /srv/runs/\$", f"\\1alias {runs}/$"),
        (r"\$\{MEDIA_SIGNING_SECRET\}", SECRET),
    ]:
        text, count = re.subn(pattern, value, text)
        if count != 1:
            raise RuntimeError(f"{SHIPPED} changed: {pattern} not found once")
    site = work / "nginx-site.conf"
    site.write_text(text)
    temp = work / "nginx-tmp"
    temp.mkdir(exist_ok=True)
    temp_paths = "".join(f"{n}_temp_path {temp}/{n};\n" for n in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = work / "nginx.conf"
    conf.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {work}/nginx.pid;\nerror_log stderr warn;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\naccess_log off;\nkeepalive_requests 1000000;\n{temp_paths}"
        f"server {{ listen 127.0.0.1:{static.getsockname()[1]}; sendfile on; tcp_nopush on;\n"
        f"  location /files/ {{ alias {runs}/; }} }}\n"
        f"include {site};\n}}\n"
    )
    fds = [static.fileno(), front.fileno()]
    proc = PROCESSES.start(
        ["nginx", "-e", "stderr", "-p", str(work), "-c", str(conf)],
        pass_fds=fds,
        env={**os.environ, "NGINX": "".join(f"{fd};" for fd in fds)},
        stderr=(work / "nginx.log").open("wb"),
    )
    urls = f"http://127.0.0.1:{static.getsockname()[1]}", f"http://127.0.0.1:{front.getsockname()[1]}"
    static.close()
    front.close()
    _port_in_use_wait(urls[1] + "/healthz", proc)
    return proc, urls[0], urls[1]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(url: str, conns: int, seconds: float, extra: list[str]) -> dict[str, float]:
    args = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "--latency", *extra, url]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    req = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out).groups()  # type: ignore[union-attr]
    mib = float(value) * {"B": 2**-20, "KB": 2**-10, "MB": 1.0, "GB": 1024.0}[unit]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s|m)\b", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "req_s": req,
        "mib_s": mib,
        "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else float("nan"),
        "bad": float(errors.group(1)) if errors else 0.0,
        "socket_errors": float(sum(int(x) for x in socket_errors.groups())) if socket_errors else 0.0,
    }


def run(work: Path, seconds: float, conns: tuple[int, ...], sizes_scale: float = 1.0) -> list[Row]:
    runs = work / "gateway-runs"
    runs.mkdir(parents=True, exist_ok=True)
    files = []
    for label, kind, ext, size in FILES:
        size = max(64 * KiB, int(size * sizes_scale)) if size > 64 * KiB else size
        run_id = make_run(runs, kind, ext, size)
        name = next(p.name for p in (runs / run_id).iterdir() if p.name.startswith("02_"))
        files.append((f"{label if sizes_scale == 1 else f'{size // KiB} KiB {ext}'}", kind, run_id, name))
    gran, gran_url = _gateway(work, runs, "granian", accel=False)
    front_gw, front_gw_url = _gateway(work, runs, "granian", accel=True)
    ngx, static_url, front_url = _nginx(work, runs, int(front_gw_url.rsplit(":", 1)[1]))
    pids = {
        "nginx": [ngx.pid],
        "granian": [gran.pid],
        "nginx files": [ngx.pid],
        "nginx+gateway": [ngx.pid, front_gw.pid],
    }
    bases = {"nginx": static_url, "granian": gran_url, "nginx files": front_url, "nginx+gateway": front_url}
    cases: list[tuple[str, str, str, str, list[str]]] = [
        (label, kind, run_id, name, []) for label, kind, run_id, name in files
    ]
    size8 = (runs / files[1][2] / files[1][3]).stat().st_size
    seek = f"bytes={size8 // 8}-{size8 // 4 - 1}"  # 1 MiB at 1 MiB of the 8 MiB file
    cases.append(
        (
            f"Range {size8 // 8 // KiB} KiB of {files[1][0]}",
            files[1][1],
            files[1][2],
            files[1][3],
            ["-H", f"Range: {seek}"],
        )
    )
    rows: list[Row] = []
    raw: dict[str, list[dict[str, float]]] = {}
    try:
        # warm-up: page cache and each server's first requests
        for _label, kind, run_id, name, extra in cases:
            for server in SERVERS:
                wrk(_url(server, bases[server], kind, run_id, name), 4, 1, extra)
        for c in conns:
            for label, kind, run_id, name, extra in cases:
                rounds: dict[str, list[dict[str, float]]] = {server: [] for server in SERVERS}
                for attempt in range(REPEATS):  # every system once per round: alternated, not back to back
                    for server in SERVERS:
                        url = _url(server, bases[server], kind, run_id, name)
                        tag = f"{label.split(' ')[0]}-{'range' if extra else 'full'}-c{c}-{attempt}"
                        profile = f"gateway-{server.replace('+', '-').replace(' ', '-')}-{tag}"
                        with load_window() as w, profiling(pids[server][-1], profile):
                            cpu0 = sum(tree_cpu_seconds(p) for p in pids[server])
                            result = wrk(url, c, seconds, extra)
                            result["server_cpu_s"] = sum(tree_cpu_seconds(p) for p in pids[server]) - cpu0
                            result["seconds"] = max(1, round(seconds))  # wrk's -d
                        result["load"] = w.foreign_cores
                        rounds[server].append(result)
                for server, results in rounds.items():
                    raw[f"{label} c{c} {server}"] = results
                rows += _rows(label, c, {server: _median(results) for server, results in rounds.items()}, bool(extra))
    finally:
        PROCESSES.stop(ngx, signal.SIGQUIT)
        for proc in (gran, front_gw):
            PROCESSES.stop(proc)
    (work / "gateway-raw.json").write_text(json.dumps(raw, indent=1))
    return rows


def _median(results: list[dict[str, float]]) -> dict[str, float]:
    """The round with the median request rate (its other figures with it), plus the rates' spread."""
    ordered = sorted(results, key=lambda r: r["req_s"])
    middle = dict(ordered[len(ordered) // 2])
    middle["req_s"] = statistics.median(r["req_s"] for r in results)
    middle["req_min"], middle["req_max"] = ordered[0]["req_s"], ordered[-1]["req_s"]
    middle["load"] = max(r["load"] for r in results)
    middle["bad"] = sum(r["bad"] + r["socket_errors"] for r in results)
    middle["socket_errors"] = 0.0
    return middle


def _url(server: str, base: str, kind: str, run_id: str, name: str) -> str:
    if server == "nginx":
        return f"{base}/files/{run_id}/{name}"
    expires = int(time.time()) + 3600
    if server == "nginx files":  # what the service mints in the deployed setup (--media-urls files)
        return output_url(base, MediaKind(kind), run_id, 0, secret=SECRET, expires=expires, filename=name)
    if server == "nginx+gateway":  # the seed-compatible URL, signed
        return signed_media_url(f"{base}/api/media/{kind}/{run_id}/0", SECRET, expires)
    return f"{base}/api/media/{kind}/{run_id}/0"


def _goal(server: str, label: str, is_range: bool) -> tuple[str, float | None]:
    """The issue's goals: the deployed setup >= 0.9x nginx everywhere; the gateway alone >= 0.8x on large
    files, 0.3x on Range, 0.1x on 64 KiB. The seed-compatible URLs have none (one lookup each)."""
    if server == "nginx+gateway":
        return "", None
    if server == "nginx files":
        return ">= 0.9", 0.9
    if label.startswith("64 KiB"):
        return ">= 0.1", 0.1
    return (">= 0.3", 0.3) if is_range else (">= 0.8", 0.8)


def _rows(label: str, c: int, results: dict[str, dict[str, float]], is_range: bool) -> list[Row]:
    base = results["nginx"]
    rows = [
        Row(
            "4 gateway",
            f"{label}, c{c}",
            "nginx (baseline)",
            base["req_s"],
            None,
            "req/s",
            "",
            None,
            base["load"],
            _note(base),
        )
    ]
    for server in SERVERS[1:]:
        r = results[server]
        goal, need = _goal(server, label, is_range)
        ratio = r["req_s"] / base["req_s"] if base["req_s"] else 0.0
        note = _note(r) + f" (nginx p99 {base['p99_ms']:.2f} ms)"
        rows.append(
            Row(
                "4 gateway",
                f"{label}, c{c}",
                {"nginx files": "deployed: file URL", "nginx+gateway": "deployed: /api/media URL"}.get(server, server),
                r["req_s"],
                base["req_s"],
                "req/s",
                goal,
                None if need is None else (ratio >= need and not r["bad"]),
                r["load"],
                note,
            )
        )
    return rows


def _note(r: dict[str, float]) -> str:
    gib = r["mib_s"] * max(1.0, r.get("seconds", 0.0)) / 1024
    text = f"median of {REPEATS}, {r['req_min']:.0f}-{r['req_max']:.0f} req/s; {r['mib_s']:.0f} MiB/s, p99 "
    text += f"{r['p99_ms']:.2f} ms, server CPU {r['server_cpu_s']:.2f} s"
    if gib > 0:
        text += f" ({r['server_cpu_s'] / gib:.2f} s/GiB)"
    return text + (f", {r['bad']:.0f} errors" if r["bad"] else "")
