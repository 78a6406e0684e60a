"""Shared machinery: processes we start (and always stop), CPU / RSS / foreign-load accounting, stats."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


# -- processes ------------------------------------------------------------------------------------


class Processes:
    """Every process the bench starts; ``stop_all`` ends them by pid (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(list(args), **kwargs)
        self.procs.append(proc)
        return proc

    def python(self, module: str, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, "-m", module, *args], **kwargs)

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


PROCESSES = Processes()


def wait_for_file(path: Path, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if text.endswith("\n"):
                return text
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before writing {path.name}")
        time.sleep(0.05)
    raise TimeoutError(f"{path.name} not written within {timeout} s")


# -- /proc accounting -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (plus its reaped children's when ``children``)."""
    f = _stat_fields(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / CLK_TCK


def descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None:
                parents.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in parents.get(pid, []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU of a process and all its live descendants, reaped children included."""
    return sum(cpu_seconds(p, children=True) for p in [root, *descendants(root)])


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (writing 5 to clear_refs); False when the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine_busy_seconds() -> float:
    """CPU-seconds spent in processes on the whole machine (user + nice + system, all cores). irq and
    softirq time and kernel threads (loopback networking, mostly our own traffic) and steal are left out:
    they could not be told apart from our own work."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (values[0] + values[1] + values[2]) / CLK_TCK


def kernel_threads_cpu_seconds() -> float:
    """CPU of kernel threads (children of kthreadd): softirq / kworker work, mostly for our loopback traffic."""
    return sum(cpu_seconds(p) for p in descendants(2))


PROFILE_DIR: Path | None = None  # set by --profile: py-spy records the service / gateway into it


@contextlib.contextmanager
def profiling(pid: int, name: str) -> Iterator[None]:
    """``py-spy record`` of ``pid`` (collapsed stacks, ``PROFILE_DIR/name.txt``) while the block runs."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if PROFILE_DIR is None or not Path(spy).exists():
        yield
        return
    out = PROFILE_DIR / f"{name}.txt"
    args = [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--nonblocking", "-o", str(out)]
    proc = PROCESSES.start(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        PROCESSES.stop(proc, signal.SIGINT, timeout=30)


@dataclass
class LoadWindow:
    """Foreign load during a case: machine-wide busy CPU minus this bench's own process tree."""

    started: float = field(default_factory=time.monotonic)
    busy0: float = field(default_factory=machine_busy_seconds)
    ours0: float = field(default_factory=lambda: tree_cpu_seconds(os.getpid()))
    kernel0: float = field(default_factory=kernel_threads_cpu_seconds)
    foreign_cores: float = 0.0
    ours_cores: float = 0.0
    seconds: float = 0.0

    def close(self) -> LoadWindow:
        self.seconds = max(1e-6, time.monotonic() - self.started)
        busy = machine_busy_seconds() - self.busy0
        ours = tree_cpu_seconds(os.getpid()) - self.ours0
        ours += kernel_threads_cpu_seconds() - self.kernel0
        self.ours_cores = ours / self.seconds
        self.foreign_cores = max(0.0, (busy - ours) / self.seconds)
        return self


@contextlib.contextmanager
def load_window() -> Iterator[LoadWindow]:
    window = LoadWindow()
    try:
        yield window
    finally:
        window.close()


def wait_for_quiet(max_wait: float, threshold_cores: float = 0.3, step: float = 0.5) -> float:
    """Wait (at most ``max_wait`` s) until other processes use less than ``threshold_cores``; returns the
    last measured foreign load."""
    deadline = time.monotonic() + max_wait
    foreign = 0.0
    while True:
        w = LoadWindow()
        time.sleep(step)
        foreign = w.close().foreign_cores
        if foreign < threshold_cores or time.monotonic() >= deadline:
            return foreign


class RssSampler:
    """Samples a process's RSS in a background thread; ``peak_mb`` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import threading

        self.pid = pid
        self.interval = interval
        self.start_mb = rss_mb(pid)
        self.peak_mb = self.start_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
        return self.peak_mb


# -- results ----------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the result table."""

    scenario: str
    case: str
    figure: str
    value: float | None
    baseline: float | None = None
    unit: str = ""
    goal: str = ""
    met: bool | None = None
    load: float | None = None  # foreign cores during the case
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x != x:  # NaN
        return "nan"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def render_table(rows: Sequence[Row]) -> str:
    head = "| scenario | case | figure | value | baseline | ratio | goal | met | load (cores) | note |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "**NO**")
        lines.append(
            f"| {r.scenario} | {r.case} | {r.figure}{(' (' + r.unit + ')') if r.unit else ''} | {_fmt(r.value)} | "
            f"{_fmt(r.baseline)} | {_fmt(r.ratio)} | {r.goal} | {met} | {_fmt(r.load)} | {r.note} |"
        )
    return "\n".join(lines)


def rows_to_json(rows: Sequence[Row], extra: dict[str, Any]) -> str:
    return json.dumps(
        {**extra, "rows": [{**r.__dict__, "ratio": r.ratio} for r in rows]},
        indent=2,
        default=str,
    )
