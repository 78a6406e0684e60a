"""Scenario 3, output transfer: a large video output (``BenchBlob``: MP4 header + padding) stored by the
service, against a plain streaming download of the same ``/view`` URL into a file.

Service throughput = size / (``output_ready`` received - the backend's ``executing: null`` frame sent):
it includes reading /history, the download (hashing, fsync, rename) and the metadata write. Peak RSS
growth = the service's VmHWM (reset just before the run) - its RSS before the run.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from benchmarks.common import Row, load_window, profiling, reset_peak_rss, rss_mb, status_kb
from benchmarks.stack import start_service, start_sim
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc


def blob_workflow(size_mb: int) -> str:
    return json.dumps(
        {"1": {"class_type": "BenchBlob", "inputs": {"size_mb": size_mb, "filename_prefix": "bench/big"}}}
    )


async def _via_service(target: str, workflow: str) -> tuple[str, int, dict[str, Any]]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        prompt_id, ready_ns, last = "", 0, ""
        async for reply in stub.Generate(
            pb.GenerateRequest(spec=pb.RunSpec(workflow_json=workflow, workflow_name="big"))
        ):
            event = reply.event
            kind = event.WhichOneof("kind") or ""
            last = kind
            if kind == "accepted":
                prompt_id = event.accepted.prompt_id
            elif kind == "output_ready":
                ready_ns = time.time_ns()
                out = event.output_ready.output
                meta = {"size": out.size_bytes, "file": out.filename}
        if last != "completed":
            raise RuntimeError(f"the big run ended with {last!r}")
        return prompt_id, ready_ns, meta


async def _plain(url: str, params: dict[str, str], dest: Path) -> float:
    t = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as resp:
        resp.raise_for_status()
        with dest.open("wb") as fh:
            async for chunk in resp.content.iter_chunked(1 << 20):
                fh.write(chunk)
    return time.perf_counter() - t


def run(work: Path, size_mb: int, repeats: int) -> list[Row]:
    sim = start_sim(work, "transfer-sim")
    service = start_service(work, "transfer-service", sim.url)
    service_rates, plain_rates, growth = [], [], []
    try:
        with load_window() as window, profiling(service.pid, "service-transfer"):
            for _ in range(repeats):
                before = rss_mb(service.pid)
                reset_ok = reset_peak_rss(service.pid)
                prompt_id, ready_ns, meta = asyncio.run(_via_service(service.target, blob_workflow(size_mb)))
                peak = status_kb(service.pid, "VmHWM") / 1024 if reset_ok else float("nan")
                growth.append(peak - before)
                done_ns = next(t for p, n, v, t in sim.frames() if p == prompt_id and v == -1)
                service_rates.append(meta["size"] / 2**20 / ((ready_ns - done_ns) / 1e9))
                # the same file through /view, as the service fetched it (the history names it)
                hist = json.loads(asyncio.run(_get_text(f"{sim.url}/history/{prompt_id}")))[prompt_id]["outputs"]["1"][
                    "images"
                ][0]
                params = {k: hist[k] for k in ("filename", "subfolder", "type")}
                seconds = asyncio.run(_plain(f"{sim.url}/view", params, work / "plain-download.bin"))
                plain_rates.append(meta["size"] / 2**20 / seconds)
                (work / "plain-download.bin").unlink()
    finally:
        service.stop()
        sim.stop()
    # Each round measures the service, then the plain download of the same file: medians of the rounds.
    best_s, best_p = statistics.median(service_rates), statistics.median(plain_rates)
    case = f"{size_mb} MiB video output, median of {repeats}"
    load = window.foreign_cores
    g = max(growth)
    return [
        Row(
            "3 output transfer",
            case,
            "throughput into run storage",
            best_s,
            best_p,
            "MiB/s",
            "ratio >= 0.6",
            best_s / best_p >= 0.6,
            load,
            f"all: service {_join(service_rates)}; plain {_join(plain_rates)}",
        ),
        Row(
            "3 output transfer",
            case,
            "service peak RSS growth",
            g,
            None,
            "MB",
            "<= 32 MB",
            g <= 32,
            load,
            "VmHWM after - VmRSS before",
        ),
    ]


async def _get_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.text()


def _join(values: list[float]) -> str:
    return ", ".join(f"{x:.0f}" for x in values)
