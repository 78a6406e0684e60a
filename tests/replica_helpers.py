"""A replica cluster for tests: a real redis-server, simulator processes and service replicas in
processes of their own, sharing one runs dir, each on a free loopback port."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from process_helpers import RedisServer, ServiceProcess, SimProcess, free_port, start_service, start_simulator
from stack_helpers import SIM_WORKFLOWS

TAKEOVER_S = 3.0  # the tests' takeover bound (the default is 15 s)


@dataclass
class Replica:
    process: ServiceProcess
    channel: grpc.aio.Channel
    stub: Any
    name: str


@dataclass
class Cluster:
    tmp: Path
    redis: RedisServer
    sims: list[SimProcess]
    replicas: list[Replica] = field(default_factory=list)

    @property
    def runs_dir(self) -> Path:
        return self.tmp / "runs"

    async def start_replica(self, name: str, *flags: str) -> Replica:
        process = await start_service(
            "--redis-url",
            self.redis.url,
            "--replica-name",
            name,
            "--takeover-seconds",
            str(TAKEOVER_S),
            "--backend-url",
            ",".join(s.url for s in self.sims),
            "--runs-dir",
            str(self.runs_dir),
            "--media-base-url",
            "http://127.0.0.1:8080",
            "--history-poll-seconds",
            "0.2",
            "--keepalive-seconds",
            "0.5",
            "--health-check-seconds",
            "0.5",
            "--lost-prompt-grace-seconds",
            "2",
            "--shutdown-grace-seconds",
            "1",
            *flags,
        )
        channel = grpc.aio.insecure_channel(process.target)
        replica = Replica(process, channel, pb_grpc.GenerationServiceStub(channel), name)
        self.replicas.append(replica)
        return replica

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.channel.close()
            await replica.process.stop()
        for sim in self.sims:
            if sim.proc.returncode is None:
                await sim.kill()
        await self.redis.stop()


@contextlib.asynccontextmanager
async def cluster(
    tmp: Path, replicas: int = 3, backends: int = 2, *flags: str, sim_flags: tuple[str, ...] = ()
) -> AsyncIterator[Cluster]:
    redis = RedisServer(tmp / "redis")
    await redis.start()
    sims = [await start_simulator(tmp / f"sim{i}", free_port(), *sim_flags) for i in range(backends)]
    (tmp / "runs").mkdir()
    built = Cluster(tmp, redis, sims)
    try:
        for i in range(replicas):
            await built.start_replica(f"replica-{i + 1}", *flags)
        yield built
    finally:
        await built.close()


def sampler(steps: int, seconds: float, color: int = 0xABCDEF) -> str:
    graph = json.loads((SIM_WORKFLOWS / "image.json").read_text())
    graph["1"]["inputs"].update(width=32, height=32, color=color)
    graph["2"]["inputs"].update(steps=steps, seconds=seconds)
    return json.dumps(graph)


async def submit(stub: Any, **spec: Any) -> pb.Run:
    reply = await stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(**spec)))
    return reply.run


async def get_run(stub: Any, run_id: str) -> pb.Run:
    return (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run


async def cancel(stub: Any, run_id: str, reason: str = "") -> pb.Run:
    reply = await stub.CancelRun(pb.CancelRunRequest(run_id=run_id, reason=reason))
    return reply.run


async def watch(stub: Any, run_id: str, after_seq: int = 0) -> AsyncIterator[pb.RunEvent]:
    async for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=after_seq)):
        yield reply.event


async def watch_all(stub: Any, run_id: str, after_seq: int = 0) -> list[pb.RunEvent]:
    return [e async for e in watch(stub, run_id, after_seq)]
