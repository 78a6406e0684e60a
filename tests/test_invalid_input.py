"""Bad input of every kind gets a clear status naming what is wrong (INVALID_ARGUMENT), never UNKNOWN
or INTERNAL: JSON nested too deep or holding integers of thousands of digits, timeouts out of range, page tokens this
service never issued, overlong names and reasons. Only a bug is INTERNAL, and says nothing of it."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from google.protobuf import duration_pb2

from comfygen.v1 import generation_pb2 as pb
from error_helpers import generate_error, image_workflow, rejected
from generation_service import workflow
from generation_service.errors import InvalidWorkflow
from stack_helpers import Stack


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,  # Python's json gives up with a RecursionError
        '{"1": ' * 200 + "1" + "}" * 200,
        '{"1": {"class_type": "EmptyImage", "inputs": {"width": ' + "[" * 70 + "0" + "]" * 70 + "}}}",
    ],
    ids=["arrays", "objects", "an input value"],
)
async def test_json_nested_too_deep_is_invalid_argument_naming_the_limit(stack: Stack, text: str) -> None:
    error = await generate_error(stack, text)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"deeper than {workflow.MAX_JSON_DEPTH} levels" in str(error.details())
    assert list(stack.runs_dir.iterdir()) == []


def test_json_nesting_up_to_the_limit_is_accepted() -> None:
    def nested(levels: int) -> str:  # the workflow, its node and inputs are the first three levels
        value = "[" * (levels - 3) + "0" + "]" * (levels - 3)
        return '{"1": {"class_type": "EmptyImage", "inputs": {"width": ' + value + "}}}"

    assert workflow.parse(nested(64))["1"]["class_type"] == "EmptyImage"
    with pytest.raises(InvalidWorkflow, match="deeper than 64 levels"):
        workflow.parse(nested(65))


async def test_an_integer_of_5000_digits_is_invalid_argument(stack: Stack) -> None:
    text = json.dumps(image_workflow()).replace('"width": 512', '"width": ' + "9" * 5000)
    assert "9" * 5000 in text
    error = await generate_error(stack, text)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 4300 digits" in str(error.details())


async def test_timeouts_out_of_range_are_invalid_argument(stack: Stack) -> None:
    for field in ("queue_timeout", "execution_timeout"):
        for seconds in (10**15, -(10**15), 0, 604_801, 315_576_000_000):  # the last: Duration's own maximum
            request = pb.RunSpec(workflow_json=json.dumps(image_workflow()))
            getattr(request, field).CopyFrom(duration_pb2.Duration(seconds=seconds))
            error = await rejected(stack, request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, seconds)
            assert f"{field} must be more than 0 s and at most 604800 s" in str(error.details())


async def test_a_timeout_of_seven_days_is_accepted(stack: Stack) -> None:
    stack.sim.faults.stall = True  # it only has to be accepted
    week = duration_pb2.Duration(seconds=7 * 24 * 3600)
    request = pb.RunSpec(workflow_json=json.dumps(image_workflow()), queue_timeout=week, execution_timeout=week)
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=request))).run
    cancelled = (await stack.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))).run
    assert cancelled.status == pb.RUN_STATUS_CANCELLED


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


NOT_OURS = [
    _b64(b"hello"),  # not JSON
    _b64(b'"ab"'),  # JSON of the wrong shape
    _b64(b"[1, 2]"),
    _b64(b'["2025-01-01T00:00:00.000Z", "not-a-run-id"]'),
    _b64(b'{"created": "x", "run_id": "y"}'),
    _b64(b"[" * 5000),  # nesting Python's json cannot decode
    _b64(b"\xff\xfe\x00\xd8"),  # not UTF-8
    "é",
    "not base64!",
    _b64(b'["x", "y"]') * 100,  # far longer than any token the service issues
]


async def test_page_tokens_not_issued_here_are_invalid_argument(stack: Stack) -> None:
    for token in NOT_OURS:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.ListRuns(pb.ListRunsRequest(page_token=token))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, token
        assert info.value.details() == "page_token is not one this service issued"


async def test_workflow_name_and_cancel_reason_have_a_length_limit(stack: Stack) -> None:
    graph = json.dumps(image_workflow())
    error = await rejected(stack, pb.RunSpec(workflow_json=graph, workflow_name="n" * 257))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "256 characters" in str(error.details())
    stack.sim.faults.stall = True
    run = (await stack.stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=graph, workflow_name="n" * 256)))).run
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id, reason="r" * 501))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "500 characters" in str(info.value.details())
    cancelled = (await stack.stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id, reason="r" * 500))).run
    assert cancelled.cancel_reason == "r" * 500


async def test_an_unexpected_exception_is_internal_without_its_text(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(run_id: str) -> None:
        raise RuntimeError("quoting the request: " + run_id * 10_000)

    monkeypatch.setattr(stack.service.runner, "get", broken)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.GetRun(pb.GetRunRequest(run_id="0" * 8 + "-0000-4000-8000-" + "0" * 12))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error; the service logged it"
