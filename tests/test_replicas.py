"""Several service replicas on one Redis and one run storage (real redis-server, simulator and service
processes): any replica answers any run, request ids hold across replicas, the in-flight limit and the
backends' load are shared, and a replica that dies or freezes loses its runs to the others."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from event_checks import assert_coalesced, assert_one_run, coalesced, read_journal
from generation_client import AsyncGenerationClient
from process_helpers import free_port
from replica_helpers import (
    TAKEOVER_S,
    cancel,
    cluster,
    get_run,
    sampler,
    submit,
    watch,
    watch_all,
)


async def test_a_run_started_on_one_replica_is_watched_got_listed_and_cancelled_on_the_others(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        one, two, three = c.replicas
        run = await submit(one.stub, workflow_json=sampler(steps=5, seconds=0.5))
        events = await watch_all(two.stub, run.run_id)
        assert_one_run(events)
        assert events[-1].HasField("completed")
        got = await get_run(three.stub, run.run_id)
        assert got.status == pb.RUN_STATUS_COMPLETED and got.last_seq == events[-1].seq
        assert [o.sha256 for o in got.outputs] == [o.sha256 for o in events[-1].completed.outputs]
        listed = await three.stub.ListRuns(pb.ListRunsRequest())
        assert [r.run_id for r in listed.runs] == [run.run_id]
        # Replayed on a replica that was not watching, after the fact, from any seq (each node's last progress).
        journal = read_journal(c.runs_dir, run.run_id)
        assert await watch_all(three.stub, run.run_id, after_seq=2) == coalesced(journal[2:])

        slow = await submit(one.stub, workflow_json=sampler(steps=200, seconds=60, color=1))
        async for event in watch(three.stub, slow.run_id):
            if event.HasField("node_progress"):
                break
        cancelled = await cancel(two.stub, slow.run_id, reason="from replica two")
        assert cancelled.status == pb.RUN_STATUS_CANCELLED and cancelled.cancel_reason == "from replica two"
        events = await watch_all(three.stub, slow.run_id)
        assert_one_run(events)
        assert events[-1].HasField("cancelled")


def _owner(runs_dir: Path, run_id: str) -> str:
    return str(json.loads((runs_dir / run_id / ".owner.json").read_text())["replica"])


async def _until_progress(stub, run_id: str) -> list[pb.RunEvent]:
    seen = []
    async for event in watch(stub, run_id):
        seen.append(event)
        if event.HasField("node_progress"):
            return seen
    raise AssertionError(f"run {run_id} ended before it made progress: {seen[-1]}")


async def _until_owner_changes(runs_dir: Path, run_id: str, old: str) -> str:
    async with asyncio.timeout(TAKEOVER_S + 10):
        while (owner := _owner(runs_dir, run_id)) == old:
            await asyncio.sleep(0.05)
    return owner


async def test_a_killed_owner_loses_its_run_to_another_replica_and_its_watchers_see_one_run(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        one, _, three = c.replicas
        run = await submit(one.stub, workflow_json=sampler(steps=30, seconds=6))
        assert _owner(c.runs_dir, run.run_id) == "replica-1"
        watcher = watch(three.stub, run.run_id)
        events = []
        async for event in watcher:
            events.append(event)
            if event.HasField("node_progress"):
                break
        killed = time.monotonic()
        await one.process.kill()
        new_owner = await _until_owner_changes(c.runs_dir, run.run_id, "replica-1")
        taken_after = time.monotonic() - killed
        events += [e async for e in watcher]

        assert new_owner in ("replica-2", "replica-3")
        assert taken_after <= TAKEOVER_S + 5, taken_after  # the bound plus room for a loaded machine
        assert_one_run(events)
        assert events[-1].HasField("completed"), events[-1]
        (output,) = events[-1].completed.outputs
        stored = c.runs_dir / run.run_id / output.filename
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == output.sha256
        for replica in c.replicas[1:]:
            got = await get_run(replica.stub, run.run_id)
            assert got.status == pb.RUN_STATUS_COMPLETED and got.last_seq == events[-1].seq


async def test_a_frozen_owner_that_wakes_after_the_takeover_writes_nothing(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        one, two, three = c.replicas
        run = await submit(one.stub, workflow_json=sampler(steps=40, seconds=8))
        seen = await _until_progress(two.stub, run.run_id)
        one.process.signal(signal.SIGSTOP)
        await _until_owner_changes(c.runs_dir, run.run_id, "replica-1")
        events = seen + await watch_all(three.stub, run.run_id, after_seq=seen[-1].seq)
        assert_one_run(events)
        assert events[-1].HasField("completed")
        folder = c.runs_dir / run.run_id
        before = {p.name: p.read_bytes() for p in folder.iterdir()}

        one.process.signal(signal.SIGCONT)
        async with asyncio.timeout(30):
            while not any("another replica owns it now" in line for line in one.process.log):
                await asyncio.sleep(0.05)
        # It noticed, and stopped: the run's folder is exactly as its new owner left it.
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
        again = await get_run(one.stub, run.run_id)
        assert again.status == pb.RUN_STATUS_COMPLETED and again.last_seq == events[-1].seq
        assert [e.seq for e in await watch_all(one.stub, run.run_id)] == [e.seq for e in events]


async def test_one_request_id_sent_to_every_replica_at_once_starts_one_run(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        request = {"workflow_json": sampler(steps=2, seconds=0.2), "request_id": "lesson-7-attempt-1"}
        runs = await asyncio.gather(*(submit(c.replicas[i % 3].stub, **request) for i in range(20)))
        assert len({r.run_id for r in runs}) == 1
        assert [p.name for p in c.runs_dir.iterdir()] == [runs[0].run_id]
        events = await watch_all(c.replicas[2].stub, runs[0].run_id)
        assert_one_run(events)
        again = await submit(c.replicas[1].stub, **request)  # a later retry too
        assert again.run_id == runs[0].run_id
        other = {"workflow_json": sampler(steps=3, seconds=0.2), "request_id": "lesson-7-attempt-1"}
        try:
            await submit(c.replicas[0].stub, **other)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
        else:
            raise AssertionError("a different request under a used request id was accepted")


async def _health(replica) -> int:
    stub: Any = health_pb2_grpc.HealthStub(replica.channel)  # the published stubs omit the stub's methods
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    return int(reply.status)


async def _until_health(replica, status: int) -> None:
    async with asyncio.timeout(20):
        while await _health(replica) != status:
            await asyncio.sleep(0.1)


async def test_redis_stopped_mid_run_loses_no_event_and_refuses_new_runs_meanwhile(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        one, two, three = c.replicas
        run = await submit(one.stub, workflow_json=sampler(steps=30, seconds=6))
        local = watch(one.stub, run.run_id)
        remote = watch(two.stub, run.run_id)
        seen_local: list[pb.RunEvent] = []
        seen_remote: list[pb.RunEvent] = []
        for stream, seen in ((local, seen_local), (remote, seen_remote)):
            async for event in stream:
                seen.append(event)
                if event.HasField("node_progress"):
                    break

        await c.redis.stop()
        await _until_health(two, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            await submit(two.stub, workflow_json=sampler(steps=2, seconds=0.2))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and "Redis" in (exc.details() or ""), exc
        else:
            raise AssertionError("a run was accepted while Redis was down")
        # The owner goes on following its run and journaling it; its own watchers see it live.
        async for event in local:
            seen_local.append(event)
            if event.HasField("node_progress") and len(seen_local) > len(seen_remote) + 3:
                break

        await c.redis.start()
        await _until_health(two, health_pb2.HealthCheckResponse.SERVING)
        seen_local += [e async for e in local]
        seen_remote += [e async for e in remote]
        assert_one_run(seen_local)
        assert seen_local[-1].HasField("completed")
        journal = read_journal(c.runs_dir, run.run_id)
        assert_coalesced(seen_local, journal)
        assert_coalesced(seen_remote, journal)
        got = await get_run(three.stub, run.run_id)
        assert got.status == pb.RUN_STATUS_COMPLETED and got.last_seq == journal[-1].seq
        assert await watch_all(three.stub, run.run_id) == coalesced(journal)
        after = await submit(three.stub, workflow_json=sampler(steps=2, seconds=0.2, color=5))
        assert (await watch_all(two.stub, after.run_id))[-1].HasField("completed")


async def test_the_in_flight_limit_holds_across_replicas(tmp_path: Path) -> None:
    async with cluster(tmp_path, 3, 2, "--max-runs-in-flight", "2") as c:
        workflows = [sampler(steps=100, seconds=60, color=i) for i in range(6)]
        outcomes = await asyncio.gather(
            *(submit(c.replicas[i % 3].stub, workflow_json=w) for i, w in enumerate(workflows)), return_exceptions=True
        )
        accepted = [o for o in outcomes if isinstance(o, pb.Run)]
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert len(accepted) == 2, outcomes
        assert [e.code() for e in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
        owner = int(_owner(c.runs_dir, accepted[0].run_id).removeprefix("replica-")) - 1
        await cancel(c.replicas[owner].stub, accepted[0].run_id)  # on its owner (elsewhere: the first test)
        third = await submit(c.replicas[1].stub, workflow_json=workflows[5])  # a place is free again
        assert third.run_id not in {r.run_id for r in accepted}


async def _until_queues(replica, lengths: list[int]) -> None:
    async with asyncio.timeout(20):
        while True:
            backends = (await replica.stub.ListBackends(pb.ListBackendsRequest())).backends
            if sorted(b.queue_length for b in backends) == lengths:
                return
            await asyncio.sleep(0.1)


async def test_replicas_choosing_at_once_share_the_backends_load(tmp_path: Path) -> None:
    async with cluster(tmp_path, 3, 2, "--health-check-seconds", "2") as c:
        one, two, three = c.replicas
        # Both backends busy, as every replica sees it.
        for color in (1, 2):
            await submit(one.stub, workflow_json=sampler(steps=100, seconds=60, color=color))
        for replica in c.replicas:
            await _until_queues(replica, [1, 1])
        # Two runs from two replicas, before either backend's queue is looked at again: one each.
        first = await submit(two.stub, workflow_json=sampler(steps=2, seconds=0.2, color=3))
        second = await submit(three.stub, workflow_json=sampler(steps=2, seconds=0.2, color=4))
        assert first.backend != second.backend, (first.backend, second.backend)


async def test_a_replica_stopped_gracefully_hands_its_runs_over_at_once(tmp_path: Path) -> None:
    # A takeover bound of a minute: a run that moves within seconds was handed over, not found idle.
    async with cluster(tmp_path, 2, 1, "--takeover-seconds", "60") as c:
        one, two = c.replicas
        run = await submit(one.stub, workflow_json=sampler(steps=30, seconds=6))
        seen = await _until_progress(two.stub, run.run_id)
        await one.process.stop()  # SIGTERM
        async with asyncio.timeout(20):
            while _owner(c.runs_dir, run.run_id) != "replica-2":
                await asyncio.sleep(0.05)
        events = seen + await watch_all(two.stub, run.run_id, after_seq=seen[-1].seq)
        assert_one_run(events)
        assert events[-1].HasField("completed")


async def test_a_redis_that_forgot_everything_mid_run_is_filled_again_from_run_storage(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        one, two, three = c.replicas
        done = await submit(one.stub, workflow_json=sampler(steps=2, seconds=0.2, color=9))
        assert (await watch_all(two.stub, done.run_id))[-1].HasField("completed")
        run = await submit(one.stub, workflow_json=sampler(steps=30, seconds=6))
        seen = await _until_progress(two.stub, run.run_id)
        client = aioredis.Redis.from_url(c.redis.url)
        try:
            await client.flushall()
            async with asyncio.timeout(20):  # the replicas notice, and put back what run storage has
                while not await client.exists("generation:indexed"):
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        events = seen + await watch_all(three.stub, run.run_id, after_seq=seen[-1].seq)
        assert_one_run(events)
        assert events[-1].HasField("completed")
        journal = read_journal(c.runs_dir, run.run_id)
        assert_coalesced(events, journal)
        assert await watch_all(two.stub, run.run_id) == coalesced(journal)
        listed = await three.stub.ListRuns(pb.ListRunsRequest())
        assert [r.run_id for r in listed.runs] == [run.run_id, done.run_id]


GRPC_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "grpc.conf"


async def test_the_shipped_grpc_front_spreads_calls_over_the_replicas(tmp_path: Path) -> None:
    async with cluster(tmp_path, 2, 1) as c:
        text = GRPC_CONF.read_text()
        servers = "".join(f"server {r.process.target};\n" for r in c.replicas)
        port = free_port()
        for old, new in [
            ("server generation-service:50051;\n", servers),
            ("listen 50051 http2;", f"listen 127.0.0.1:{port} http2;"),
        ]:
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        site = tmp_path / "grpc.conf"
        site.write_text(text)
        conf = tmp_path / "nginx.conf"
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(f"{n}_temp_path {tmp_path}/{n};\n" for n in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log stderr warn;\n"
            f"events {{ worker_connections 256; }}\nhttp {{\naccess_log off;\n{temp}include {site};\n}}\n"
        )
        nginx = await asyncio.create_subprocess_exec(
            "nginx", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf), stderr=asyncio.subprocess.PIPE
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            async with asyncio.timeout(60):  # a call that nginx never answers fails here, not at pytest's limit
                await channel.channel_ready()
                stub = pb_grpc.GenerationServiceStub(channel)
                runs = [await submit(stub, workflow_json=sampler(steps=2, seconds=0.2, color=i)) for i in range(4)]
                for run in runs:  # streams through nginx, to whichever replica it picks
                    events = await watch_all(stub, run.run_id)
                    assert_one_run(events)
                    assert events[-1].HasField("completed")
            assert {_owner(c.runs_dir, r.run_id) for r in runs} == {"replica-1", "replica-2"}
        finally:
            await channel.close()
            # Fast shutdown: a graceful one lets workers wait on open connections, holding stderr open.
            nginx.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(nginx.communicate(), 20)
        assert b"[emerg]" not in stderr and b"[alert]" not in stderr, stderr.decode()


async def test_the_client_balances_over_the_replicas_and_retries_reads_when_one_dies(tmp_path: Path) -> None:
    async with cluster(tmp_path, 2, 1) as c:
        # One target naming both replicas (a dns:/// name with two addresses resolves the same way).
        target = "ipv4:" + ",".join(r.process.target for r in c.replicas)
        async with AsyncGenerationClient(target) as client:
            runs = [await client.submit(sampler(steps=2, seconds=0.2, color=i)) for i in range(4)]
            assert {_owner(c.runs_dir, r.run_id) for r in runs} == {"replica-1", "replica-2"}
            for run in runs:
                events = [e async for e in client.watch(run.run_id)]
                assert events[-1].HasField("completed")
            await c.replicas[0].process.kill()
            # Reads keep working: a call that meets the dead replica is retried on the live one.
            for _ in range(3):
                for run in runs:
                    assert (await client.get(run.run_id)).status == pb.RUN_STATUS_COMPLETED


async def test_a_generate_call_outlives_its_replica_losing_the_run(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        one = c.replicas[0]
        request = pb.GenerateRequest(spec=pb.RunSpec(workflow_json=sampler(steps=30, seconds=6)))
        call = one.stub.Generate(request)
        events = []
        async for reply in call:
            events.append(reply.event)
            if reply.event.HasField("node_progress"):
                break
        run_id = events[0].run_id
        # Another owner's mark, as a replica that took the run over would make it: replica one stops
        # writing the run, stops claiming it, and the others take it over once its entry is idle.
        mark = c.runs_dir / run_id / ".owner.json"
        mark.write_text(json.dumps({"replica": "elsewhere"}))
        events += [reply.event async for reply in call]
        assert_one_run(events)
        assert events[-1].HasField("completed")
        # Taken over through the owners group by a live replica (replica one itself may claim it back).
        assert _owner(c.runs_dir, run_id) in ("replica-1", "replica-2", "replica-3")
        assert any("another replica owns it now" in line for line in one.process.log)


async def test_live_previews_reach_watchers_on_other_replicas(tmp_path: Path) -> None:
    async with cluster(tmp_path, 2, 1, sim_flags=("--preview-method", "taesd")) as c:
        one, two = c.replicas
        run = await submit(one.stub, workflow_json=sampler(steps=12, seconds=2.4), live_previews=True)
        events = await watch_all(two.stub, run.run_id)
        previews = [e.preview for e in events if e.HasField("preview")]
        journaled = [e for e in events if not e.HasField("preview")]
        assert_one_run(journaled)
        assert journaled[-1].HasField("completed")
        numbers = [p.number for p in previews]
        assert len(numbers) >= 2 and numbers == sorted(set(numbers)), numbers  # newest ones, in order
        assert all(p.image[:2] == b"\xff\xd8" and p.mime == "image/jpeg" for p in previews)


async def test_durations_measured_on_one_replica_give_estimates_on_another(tmp_path: Path) -> None:
    async with cluster(tmp_path, 2, 1) as c:
        one, two = c.replicas
        workflow = sampler(steps=10, seconds=2.0, color=0x123456)
        first = await watch_all(one.stub, (await submit(one.stub, workflow_json=workflow)).run_id)
        assert first[-1].HasField("completed")
        started = next(e.started for e in first if e.HasField("started"))
        assert not started.HasField("estimate")  # nothing measured yet
        async with httpx.AsyncClient() as http:  # ComfyUI would replay the cached result otherwise
            assert (await http.post(c.sims[0].url + "/free", json={"free_memory": True})).status_code == 200
        second = await watch_all(two.stub, (await submit(two.stub, workflow_json=workflow)).run_id)
        started = next(e.started for e in second if e.HasField("started"))
        assert started.estimate.basis == pb.ESTIMATE_BASIS_HISTORY  # before its first step, from replica one's run
        assert not (c.runs_dir / "estimates.json").exists()  # in Redis, not overwritten by each replica in turn
