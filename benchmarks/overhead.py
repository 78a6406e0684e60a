"""Scenario 1, per-run overhead: sequential zero-work runs through the service (genctl's client call:
grpc.aio ``Generate``, events until ``completed``) against a minimal direct ComfyUI client doing the same
protocol steps against the same simulator (websocket, POST /prompt, wait for ``executing: null``,
GET /history, GET /view of each output into a file). Both keep their connection between runs: one gRPC
channel, one aiohttp session and websocket (the service, too, keeps one websocket per backend)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from benchmarks.common import Row, cpu_seconds, load_window, percentile, profiling
from benchmarks.stack import start_service, start_sim
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc

ZERO_WORK = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench/zero"}},
}


class DirectClient:
    """What a polling script does, minus the polling: the protocol steps only."""

    def __init__(self, base: str, out_dir: Path) -> None:
        self.base = base
        self.out_dir = out_dir
        self.client_id = uuid.uuid4().hex
        self.done: dict[str, asyncio.Future[None]] = {}

    async def __aenter__(self) -> DirectClient:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(f"{self.base}/ws?clientId={self.client_id}")
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.session.close()

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            data = frame.get("data") or {}
            if frame.get("type") == "executing" and data.get("node") is None:
                fut = self.done.get(data.get("prompt_id", ""))
                if fut is not None and not fut.done():
                    fut.set_result(None)

    async def run(self, n: int) -> int:
        prompt = json.loads(json.dumps(ZERO_WORK))
        prompt["2"]["inputs"]["filename_prefix"] = f"direct/{n}/zero"  # like the service: no cache replay
        prompt_id = str(uuid.uuid4())
        fut = self.done[prompt_id] = asyncio.get_running_loop().create_future()
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        async with self.session.post(f"{self.base}/prompt", json=body) as resp:
            resp.raise_for_status()
        await fut
        del self.done[prompt_id]
        async with self.session.get(f"{self.base}/history/{prompt_id}") as resp:
            history = (await resp.json())[prompt_id]
        if history["status"]["status_str"] != "success":
            raise RuntimeError(f"direct run failed: {history['status']}")
        size = 0
        for node_out in history["outputs"].values():
            for item in node_out.get("images", []):
                params = {k: item[k] for k in ("filename", "subfolder", "type")}
                async with self.session.get(f"{self.base}/view", params=params) as resp:
                    resp.raise_for_status()
                    with (self.out_dir / f"{n}_{item['filename']}").open("wb") as fh:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            fh.write(chunk)
                            size += len(chunk)
        return size


async def _service_run(stub: Any, workflow: str) -> None:
    last = ""
    async for reply in stub.Generate(pb.GenerateRequest(spec=pb.RunSpec(workflow_json=workflow, workflow_name="zero"))):
        event = reply.event
        last = event.WhichOneof("kind") or ""
    if last != "completed":
        raise RuntimeError(f"service run ended with {last!r}")


async def _measure(work: Path, runs: int, warmup: int, block: int) -> dict[str, Any]:
    sim = start_sim(work, "overhead-sim")
    service = start_service(work, "overhead-service", sim.url)
    out = work / "overhead-direct"
    out.mkdir(exist_ok=True)
    workflow = json.dumps(ZERO_WORK)
    via_service: list[float] = []
    direct: list[float] = []
    service_cpu = 0.0
    try:
        async with grpc.aio.insecure_channel(service.target) as channel, DirectClient(sim.url, out) as dc:
            stub = pb_grpc.GenerationServiceStub(channel)
            for i in range(warmup):
                await _service_run(stub, workflow)
                await dc.run(-1 - i)
            n = 0
            with load_window() as window, profiling(service.pid, "service-overhead"):
                while n < runs:
                    c0 = cpu_seconds(service.pid)
                    for _ in range(min(block, runs - n)):
                        t = time.perf_counter()
                        await _service_run(stub, workflow)
                        via_service.append(time.perf_counter() - t)
                    service_cpu += cpu_seconds(service.pid) - c0
                    for j in range(min(block, runs - n)):
                        t = time.perf_counter()
                        await dc.run(n + j)
                        direct.append(time.perf_counter() - t)
                    n += block
    finally:
        service.stop()
        sim.stop()
    return {"service": via_service, "direct": direct, "service_cpu_s": service_cpu, "load": window.foreign_cores}


def run(work: Path, runs: int) -> list[Row]:
    r = asyncio.run(_measure(work, runs, warmup=min(10, runs // 5 + 1), block=10))
    s, d = r["service"], r["direct"]
    load = r["load"]
    case = f"{len(s)} sequential zero-work runs"
    sp50, sp99, dp50, dp99 = (percentile(s, 50), percentile(s, 99), percentile(d, 50), percentile(d, 99))
    cpu_ms = r["service_cpu_s"] / len(s) * 1000
    return [
        Row(
            "1 per-run overhead",
            case,
            "latency p50",
            sp50 * 1000,
            dp50 * 1000,
            "ms",
            "ratio <= 1.5",
            sp50 / dp50 <= 1.5,
            load,
            "baseline: direct ComfyUI client",
        ),
        Row(
            "1 per-run overhead",
            case,
            "latency p99",
            sp99 * 1000,
            dp99 * 1000,
            "ms",
            "",
            None,
            load,
            "blocks of 10 runs alternate between the service and the direct client",
        ),
        Row(
            "1 per-run overhead",
            case,
            "service CPU per run",
            cpu_ms,
            None,
            "ms",
            "<= 5 ms",
            cpu_ms <= 5,
            load,
            "utime+stime of the service process",
        ),
    ]
