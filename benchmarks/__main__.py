"""``python -m benchmarks [--quick] [--only 1,2a,2b,2c,3,4,5,6] [--out bench-results.json]``"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import common, gateway, overhead, pool, previews, replicas, streams, transfer
from benchmarks.common import PROCESSES, Row, raise_fd_limit, render_table, rows_to_json, wait_for_quiet

SCENARIOS = ("1", "2a", "2b", "2c", "3", "4", "5", "6")
FULL: dict[str, Any] = {
    "runs": 300,
    "streams": 1000,
    "steps": 20,
    "seconds": 10.0,
    "gen_channels": 10,
    "watchers": 10000,
    "watch_runs": 100,
    "watch_steps": 20,
    "watch_seconds": 20.0,
    "watch_procs": 2,
    "watch_channels": 4,
    "watch_repeats": 3,
    "transfer_mb": 200,
    "transfer_repeats": 3,
    "gateway_seconds": 5.0,
    "gateway_scale": 1.0,
    "pool_runs": 60,
    "preview_watchers": 1000,
    "preview_runs": 100,
    "preview_steps": 20,
    "preview_seconds": 2.0,
    "preview_repeats": 2,
    "pool_seconds": 0.5,
    "replica_repeats": 1,
    "takeover_trials": 10,
    "takeover_seconds": 15.0,
}
QUICK: dict[str, Any] = {
    "runs": 40,
    "streams": 100,
    "steps": 5,
    "seconds": 2.0,
    "gen_channels": 2,
    "watchers": 500,
    "watch_runs": 10,
    "watch_steps": 5,
    "watch_seconds": 2.0,
    "watch_procs": 2,
    "watch_channels": 2,
    "watch_repeats": 1,
    "transfer_mb": 20,
    "transfer_repeats": 1,
    "gateway_seconds": 1.0,
    "gateway_scale": 0.125,
    "pool_runs": 12,
    "preview_watchers": 100,
    "preview_runs": 10,
    "preview_steps": 10,
    "preview_seconds": 1.0,
    "preview_repeats": 1,
    "pool_seconds": 0.2,
    "replica_repeats": 1,
    "takeover_trials": 2,
    "takeover_seconds": 3.0,
}


def _needs_tools() -> None:
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"benchmarks: needs {' and '.join(missing)} (apt-get install {' '.join(missing)})")
    print(f"installing {' '.join(missing)} with apt-get ...", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *missing],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="every scenario at small sizes (a smoke run)")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated scenarios of {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--out", default="bench-results.json", help="JSON results file (default %(default)s)")
    parser.add_argument(
        "--profile",
        default="",
        help="folder for py-spy profiles (collapsed stacks) of the service and gateway in each case; "
        "needs py-spy (pip install py-spy); figures are then disturbed by the sampling",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, raw results)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="wait up to this many s for foreign load < 0.3 cores before each scenario",
    )
    for key, value in FULL.items():
        parser.add_argument(
            "--" + key.replace("_", "-"), type=type(value), default=None, help=f"(full: {value}, quick: {QUICK[key]})"
        )
    return parser


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    sizes = dict(QUICK if args.quick else FULL)
    for key in FULL:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(only) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if "4" in only:
        _needs_tools()
    signal.signal(signal.SIGTERM, _terminate)
    fd_limit = raise_fd_limit()
    if args.profile:
        common.PROFILE_DIR = Path(args.profile).resolve()
        common.PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gensvc-bench-"))
    rows: list[Row] = []
    started = time.monotonic()
    plan: list[tuple[str, Callable[[], list[Row]]]] = [
        ("1", lambda: overhead.run(work, sizes["runs"])),
        (
            "2a",
            lambda: streams.generate_streams(
                work, sizes["streams"], sizes["steps"], sizes["seconds"], sizes["gen_channels"]
            ),
        ),
        (
            "2b",
            lambda: streams.watchers(
                work,
                sizes["watchers"],
                sizes["watch_runs"],
                sizes["watch_steps"],
                sizes["watch_seconds"],
                sizes["watch_procs"],
                sizes["watch_channels"],
                sizes["watch_repeats"],
            ),
        ),
        ("2c", lambda: previews.run(work, sizes)),
        ("3", lambda: transfer.run(work, sizes["transfer_mb"], sizes["transfer_repeats"])),
        ("4", lambda: gateway.run(work, sizes["gateway_seconds"], (16, 64), sizes["gateway_scale"])),
        ("5", lambda: pool.run(work, sizes["pool_runs"], 5, sizes["pool_seconds"])),
        ("6", lambda: replicas.run(work, sizes)),
    ]
    try:
        for name, scenario in plan:
            if name not in only:
                continue
            wait_for_quiet(args.quiet_wait)
            t = time.monotonic()
            print(f"scenario {name} ...", file=sys.stderr, flush=True)
            new = scenario()
            rows += new
            print(render_table(new), file=sys.stderr, flush=True)
            print(f"scenario {name} took {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; stopping everything started", file=sys.stderr)
        return 130
    finally:
        PROCESSES.stop_all()
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    meta = {
        "mode": "quick" if args.quick else "full",
        "sizes": sizes,
        "seconds": round(time.monotonic() - started, 1),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "fd_limit": fd_limit,
        },
        "load_column": "other processes' CPU (cores) during the case: machine user+nice+system "
        "minus this bench's process tree",
    }
    Path(args.out).write_text(rows_to_json(rows, meta))
    print(render_table(rows))
    print(f"\n{len(rows)} figures in {meta['seconds']:.0f} s; written to {args.out}")
    missed = [r for r in rows if r.met is False]
    print(f"goals: {sum(1 for r in rows if r.met)} met, {len(missed)} missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
