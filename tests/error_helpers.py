"""Requests that fail, and their gRPC status and details as a client receives them (and the bytes they took)."""

from __future__ import annotations

import base64
import json
import urllib.parse
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from comfygen.v1 import generation_pb2 as pb
from stack_helpers import SIM_WORKFLOWS, Stack

# What a default client accepts: 8 KiB of metadata in all. The service keeps a status's message and
# details within half of it.
STATUS_BUDGET_BYTES = 4096
_PLAIN = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")  # what grpc-message sends as is


def details_bin(error: grpc.aio.AioRpcError) -> bytes:
    """The raw grpc-status-details-bin trailer, or b"" when the status has no details."""
    value = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    assert isinstance(value, bytes)
    return value


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status the service sent (its code and message match the call's)."""
    status = status_pb2.Status.FromString(details_bin(error))
    assert status.code == error.code().value[0] and status.message == error.details()
    return status


def bad_request(error: grpc.aio.AioRpcError) -> error_details_pb2.BadRequest:
    bad = error_details_pb2.BadRequest()
    assert rich_status(error).details[0].Unpack(bad)
    return bad


def sent_bytes(error: grpc.aio.AioRpcError) -> int:
    """Bytes the status message (percent-encoded) and its details (base64) took on the wire."""
    message = urllib.parse.quote((error.details() or "").encode(), safe=_PLAIN)
    return len(message) + len(base64.b64encode(details_bin(error)))


def image_workflow() -> dict[str, Any]:
    return dict(json.loads((SIM_WORKFLOWS / "image.json").read_text()))


async def rejected(stack: Stack, request: pb.RunSpec) -> grpc.aio.AioRpcError:
    """The error a Generate call ends with before any event."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.Generate(pb.GenerateRequest(spec=request)).read()
    return info.value


async def generate_error(stack: Stack, graph: object) -> grpc.aio.AioRpcError:
    text = graph if isinstance(graph, str) else json.dumps(graph)
    return await rejected(stack, pb.RunSpec(workflow_json=text))
