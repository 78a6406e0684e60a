"""Several service replicas on one Redis and one run storage (real redis-server, simulator and service
processes): any replica answers any run, request ids hold across replicas, the in-flight limit and the
backends' load are shared, and a replica that dies or freezes loses its runs to the others."""

from __future__ import annotations

from pathlib import Path

from generation_service.v1 import generation_pb2 as pb
from replica_helpers import assert_one_continuous_run, cluster, sampler, watch_all


async def test_a_run_started_on_one_replica_is_watched_got_listed_and_cancelled_on_the_others(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        one, two, three = c.replicas
        run = await one.stub.Submit(pb.GenerateRequest(workflow_json=sampler(steps=5, seconds=0.5)))
        events = await watch_all(two.stub, run.run_id)
        assert_one_continuous_run(events)
        assert events[-1].HasField("completed")
        got = await three.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
        assert got.status == pb.RUN_STATUS_COMPLETED and got.last_seq == events[-1].seq
        assert [o.sha256 for o in got.outputs] == [o.sha256 for o in events[-1].completed.outputs]
        listed = await three.stub.ListRuns(pb.ListRunsRequest())
        assert [r.run_id for r in listed.runs] == [run.run_id]
        # Replayed on a replica that was not watching, after the fact, from any seq.
        assert [e.seq for e in await watch_all(three.stub, run.run_id, after_seq=2)] == [e.seq for e in events[2:]]

        slow = await one.stub.Submit(pb.GenerateRequest(workflow_json=sampler(steps=200, seconds=60, color=1)))
        async for event in three.stub.WatchRun(pb.WatchRunRequest(run_id=slow.run_id)):
            if event.HasField("node_progress"):
                break
        cancelled = await two.stub.CancelRun(pb.CancelRunRequest(run_id=slow.run_id, reason="from replica two"))
        assert cancelled.status == pb.RUN_STATUS_CANCELLED and cancelled.cancel_reason == "from replica two"
        events = await watch_all(three.stub, slow.run_id)
        assert_one_continuous_run(events)
        assert events[-1].HasField("cancelled")
