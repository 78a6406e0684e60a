"""The blocking client against grpc_testing's channel: each call's request and metadata as the
service would receive them, and each answer (a reply, a stream, a status) as the client turns it into
results and typed errors, without a server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import grpc_testing
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from comfygen.v1 import generation_pb2 as pb
from generation_client import GenerationClient
from generation_client.errors import InvalidRequestError, NotFoundError, OverloadedError, RunFailedError

SERVICE = pb.DESCRIPTOR.services_by_name["GenerationService"]
RUN_ID = "0b6e2a1c-3d4f-4a5b-8c6d-7e8f9a0b1c2d"
T = TypeVar("T")


@pytest.fixture
def channel() -> grpc_testing.Channel:
    return grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())


@pytest.fixture
def calls() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:  # the client blocks; the test answers meanwhile
        yield pool


def method(name: str) -> Any:
    return SERVICE.methods_by_name[name]


def in_thread(calls: ThreadPoolExecutor, call: Callable[[], T]) -> Future[T]:
    return calls.submit(call)


def test_get_sends_the_run_id_and_the_token(channel, calls) -> None:
    client = GenerationClient.over_channel(channel, token="t0ken", timeout=12.0)
    result = in_thread(calls, lambda: client.get(RUN_ID))
    metadata, request, rpc = channel.take_unary_unary(method("GetRun"))
    rpc.terminate(
        pb.GetRunResponse(run=pb.Run(run_id=RUN_ID, status=pb.RUN_STATUS_COMPLETED)), (), grpc.StatusCode.OK, ""
    )
    assert result.result(timeout=10).status == pb.RUN_STATUS_COMPLETED
    assert request == pb.GetRunRequest(run_id=RUN_ID)
    assert ("authorization", "Bearer t0ken") in metadata


def _status(code: grpc.StatusCode, message: str, *details: Any) -> tuple[tuple[str, bytes], ...]:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    return (("grpc-status-details-bin", status.SerializeToString()),)


def test_statuses_become_typed_errors_with_their_details(channel, calls) -> None:
    client = GenerationClient.over_channel(channel)
    missing = in_thread(calls, lambda: client.get(RUN_ID))
    _, _, rpc = channel.take_unary_unary(method("GetRun"))
    rpc.terminate(pb.GetRunResponse(), (), grpc.StatusCode.NOT_FOUND, f"no run {RUN_ID}")
    with pytest.raises(NotFoundError, match="no run"):
        missing.result(timeout=10)

    bad = error_details_pb2.BadRequest(field_violations=[{"field": "params.seconds", "description": "at most 240"}])
    invalid = in_thread(calls, lambda: client.submit(template="ace_step_instrumental", params={"seconds": 999}))
    _, request, rpc = channel.take_unary_unary(method("Submit"))
    rpc.terminate(
        pb.SubmitResponse(),
        _status(grpc.StatusCode.INVALID_ARGUMENT, "bad", bad),
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad",
    )
    with pytest.raises(InvalidRequestError) as raised:
        invalid.result(timeout=10)
    assert raised.value.violations == {"params.seconds": "at most 240"}
    assert request.spec.template == "ace_step_instrumental" and request.spec.params["seconds"].integer == 999

    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromSeconds(7)
    busy = in_thread(calls, lambda: client.submit(json.dumps({"1": {"class_type": "X", "inputs": {}}})))
    _, _, rpc = channel.take_unary_unary(method("Submit"))
    rpc.terminate(
        pb.SubmitResponse(),
        _status(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", retry),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "full",
    )
    with pytest.raises(OverloadedError) as overloaded:
        busy.result(timeout=10)
    assert overloaded.value.retry_after == 7


def test_watch_yields_each_event_in_order(channel, calls) -> None:
    client = GenerationClient.over_channel(channel, timeout=5.0)
    watched = in_thread(calls, lambda: list(client.watch(RUN_ID, after_seq=2)))
    _, request, rpc = channel.take_unary_stream(method("WatchRun"))
    for seq, body in ((3, {"started": pb.Started()}), (4, {"cancelled": pb.Cancelled(reason="stop")})):
        rpc.send_response(pb.WatchRunResponse(event=pb.RunEvent(run_id=RUN_ID, seq=seq, **body)))
    rpc.terminate((), grpc.StatusCode.OK, "")
    events = watched.result(timeout=10)
    assert [(e.seq, e.WhichOneof("kind")) for e in events] == [(3, "started"), (4, "cancelled")]
    assert request == pb.WatchRunRequest(run_id=RUN_ID, after_seq=2)


def test_run_raises_the_typed_failure_of_a_run_that_did_not_complete(channel, calls) -> None:
    client = GenerationClient.over_channel(channel)
    outcome = in_thread(calls, lambda: client.run(json.dumps({"1": {"class_type": "X", "inputs": {}}})))
    _, generate, rpc = channel.take_unary_stream(method("Generate"))
    failed = pb.Failed(code=pb.FAILURE_CODE_EXECUTION_ERROR, message="node 1 raised")
    rpc.send_response(pb.GenerateResponse(event=pb.RunEvent(run_id=RUN_ID, seq=1, failed=failed)))
    rpc.terminate((), grpc.StatusCode.OK, "")
    _, request, get = channel.take_unary_unary(method("GetRun"))
    get.terminate(
        pb.GetRunResponse(run=pb.Run(run_id=RUN_ID, status=pb.RUN_STATUS_FAILED, failure=failed)),
        (),
        grpc.StatusCode.OK,
        "",
    )
    with pytest.raises(RunFailedError, match="node 1 raised"):
        outcome.result(timeout=10)
    assert generate.on_disconnect == pb.DISCONNECT_POLICY_CANCEL and request.run_id == RUN_ID
