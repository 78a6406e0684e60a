"""Errors stay small whatever the request holds: a status always fits a default client's metadata
limit (with its BadRequest detail), and stored failures and ListRuns pages stay bounded."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from comfy_generation.runstore.events import NodeProblem
from comfygen.v1 import generation_pb2 as pb
from error_helpers import (
    STATUS_BUDGET_BYTES,
    bad_request,
    generate_error,
    image_workflow,
    rejected,
    sent_bytes,
)
from gateway_helpers import read_metadata
from generation_service import servicer
from generation_service.errors import MAX_MESSAGE_CHARS, WorkflowRejected, excerpt
from generation_service.templating import Problem, TemplateRequestError
from stack_helpers import Stack


def stored_failures(stack: Stack) -> list[dict[str, Any]]:
    return [read_metadata(stack.runs_dir, p.name)["error"] for p in stack.runs_dir.iterdir()]


def save_nodes(ids: list[str]) -> dict[str, Any]:
    """Save nodes without their images input: ComfyUI rejects each one."""
    return {i: {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}} for i in ids}


# --- errors that echo the workflow --------------------------------------------------------------------


async def test_a_huge_class_type_is_quoted_as_an_excerpt(stack: Stack) -> None:
    graph = image_workflow()
    graph["1"]["class_type"] = "X" * 3000
    error = await generate_error(stack, graph)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (violation,) = bad_request(error).field_violations
    assert violation.field == "workflow_json"  # ComfyUI names no node for an unknown class
    assert "X" * 150 in violation.description and "X" * 201 not in violation.description
    assert "…" in violation.description and len(violation.description) <= 400
    assert len(error.details() or "") <= MAX_MESSAGE_CHARS and sent_bytes(error) <= STATUS_BUDGET_BYTES
    (failure,) = stored_failures(stack)
    assert len(failure["message"]) <= MAX_MESSAGE_CHARS and "X" * 201 not in json.dumps(failure)


async def test_a_hundred_invalid_save_nodes_keep_their_bad_request(stack: Stack) -> None:
    error = await generate_error(stack, save_nodes([str(i) for i in range(100)]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    *named, rest = bad_request(error).field_violations
    assert 1 <= len(named) <= 20
    assert all(v.field.startswith("workflow_json.") and v.field.endswith(".inputs.images") for v in named)
    assert rest.field == "workflow_json"
    assert rest.description == f"{100 - len(named)} more problems left out of this error"
    assert sent_bytes(error) <= STATUS_BUDGET_BYTES
    (failure,) = stored_failures(stack)
    assert len(failure["node_errors"]) == 20 and failure["message"].endswith("; and 80 more")


async def test_non_ascii_problems_are_measured_as_sent(stack: Stack) -> None:
    # grpc-message percent-encodes every byte outside ASCII: 300 "é" take 1,800 bytes on the wire.
    error = await generate_error(stack, save_nodes(["é" * 300 + str(i) for i in range(100)]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = bad_request(error).field_violations
    assert violations[-1].field == "workflow_json" and "more problems left out" in violations[-1].description
    assert sent_bytes(error) <= STATUS_BUDGET_BYTES


# aiohttp warns (ResourceWarning, ignored by default) about a prompt body over 1 MiB; the suite makes
# warnings errors.
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_a_two_megabyte_class_type_leaves_list_runs_working(stack: Stack) -> None:
    graph = image_workflow()
    graph["1"]["class_type"] = "Y" * 2_000_000
    assert (await generate_error(stack, graph)).code() == grpc.StatusCode.INVALID_ARGUMENT
    (run,) = (await stack.stub.ListRuns(pb.ListRunsRequest())).runs
    assert run.status == pb.RUN_STATUS_FAILED and run.failure.code == pb.FAILURE_CODE_INVALID_WORKFLOW
    assert len(run.failure.message) <= MAX_MESSAGE_CHARS and run.ByteSize() < 10_000
    (failure,) = stored_failures(stack)
    assert len(json.dumps(failure)) < 10_000


async def test_list_runs_pages_stop_at_the_size_budget(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        await generate_error(stack, {"1": {"class_type": f"NoSuchNode{i}", "inputs": {}}})
    everything = await stack.stub.ListRuns(pb.ListRunsRequest())
    assert len(everything.runs) == 3 and everything.next_page_token == ""
    monkeypatch.setattr(servicer, "LIST_PAGE_BUDGET_BYTES", everything.runs[0].ByteSize() + 1)
    listed, token = [], ""
    for _ in range(3):
        page = await stack.stub.ListRuns(pb.ListRunsRequest(page_size=50, page_token=token))
        assert len(page.runs) == 1  # a page over the budget still holds one run
        listed.append(page.runs[0])
        token = page.next_page_token
    assert token == "" and listed == list(everything.runs)


# --- errors that echo template requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field", "quoted"),
    [
        ({"x" * 5000: pb.ParamValue(text="1")}, "params." + "x" * 99 + "…", "unknown parameter"),
        ({"width": pb.ParamValue(text="1" * 4000)}, "params.width", "1" * 50),
        ({"steps": pb.ParamValue(text="9" * 5000)}, "params.steps", "'" + "9" * 50),
        ({"steps": pb.ParamValue(number=1e308)}, "params.steps", "above the maximum 100"),
        ({"cfg": pb.ParamValue(number=float("nan"))}, "params.cfg", "not a finite number"),
        ({"seed": pb.ParamValue(integer=-(2**63))}, "params.seed", "below the minimum 0"),
        ({"prompt": pb.ParamValue(data=b"\x00" * 100_000)}, "params.prompt", "is not text"),
    ],
)
async def test_absurd_template_params_are_invalid_argument_quoting_excerpts(
    stack: Stack, params: dict[str, pb.ParamValue], field: str, quoted: str
) -> None:
    request = pb.RunSpec(template="sd35_text_to_image", params={"prompt": pb.ParamValue(text="a"), **params})
    error = await rejected(stack, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = {v.field: v.description for v in bad_request(error).field_violations}
    assert quoted in violations[field] and len(violations[field]) <= 400
    assert sent_bytes(error) <= STATUS_BUDGET_BYTES


async def test_a_thousand_unknown_params_are_counted_not_listed(stack: Stack) -> None:
    params = {f"unknown_{i}": pb.ParamValue(text="1") for i in range(1000)}
    error = await rejected(stack, pb.RunSpec(template="solid_image", params=params))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    *named, rest = bad_request(error).field_violations
    assert 1 <= len(named) <= 20 and all(v.field.startswith("params.unknown_") for v in named)
    assert (rest.field, rest.description) == ("params", f"{1000 - len(named)} more problems left out of this error")
    assert len(error.details() or "") <= MAX_MESSAGE_CHARS and sent_bytes(error) <= STATUS_BUDGET_BYTES


async def test_unknown_template_names_are_quoted_as_excerpts(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.DescribeTemplate(pb.DescribeTemplateRequest(name="t" * 20_000))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and len(info.value.details() or "") < 500
    error = await rejected(stack, pb.RunSpec(template="t" * 20_000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown template" in str(error.details())
    assert sent_bytes(error) <= STATUS_BUDGET_BYTES


# --- the bounds themselves ----------------------------------------------------------------------------


def test_excerpt_cuts_with_an_ellipsis() -> None:
    assert excerpt("short") == "short"
    assert excerpt("x" * 200) == "x" * 200
    assert excerpt("x" * 201) == "x" * 199 + "…"
    assert excerpt("abcdef", 4) == "abc…"


def test_node_problems_and_rejections_are_bounded_at_the_source() -> None:
    huge = "é" * 100_000
    problems = tuple(NodeProblem(huge + str(i), huge, huge, huge, huge, huge) for i in range(1000))
    assert all(len(getattr(problems[0], f)) <= 200 for f in ("node_id", "class_type", "message", "details"))
    assert len(problems[0].describe()) <= 400
    error = WorkflowRejected(huge, problems)
    assert len(error.problems) == 20 and error.omitted == 980
    assert len(str(error)) <= MAX_MESSAGE_CHARS


@pytest.mark.parametrize(
    "error",
    [
        WorkflowRejected("é" * 10_000, tuple(NodeProblem(*["€" * 10_000] * 6) for _ in range(1000))),
        TemplateRequestError("é" * 10_000, tuple(Problem("€" * 10_000, "€" * 10_000) for _ in range(1000))),
        TemplateRequestError("t", (Problem(None, "€" * 10_000),)),
    ],
    ids=["rejected workflow", "template params", "one long problem"],
)
def test_every_status_fits_the_budget_as_sent(error: Exception) -> None:
    assert isinstance(error, WorkflowRejected | TemplateRequestError)
    status = servicer.fitted_status(grpc.StatusCode.INVALID_ARGUMENT, error)
    assert servicer.sent_size(status) <= servicer.STATUS_BUDGET_BYTES
    assert status.message and len(status.details) == 1  # shortened, never dropped
