"""The gRPC edge: requests in, domain events out, errors mapped to status codes (the only table)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from generation_service import events as ev
from generation_service.errors import (
    BackendProtocolError,
    BackendUnavailable,
    GenerationError,
    InvalidWorkflow,
    NodeProblem,
    WorkflowRejected,
)
from generation_service.runner import Runner, RunSpec
from generation_service.v1 import generation_pb2 as pb
from generation_service.v1 import generation_pb2_grpc as pb_grpc
from runstore import MediaKind

logger = logging.getLogger(__name__)

STATUS_FOR_ERROR: dict[type[GenerationError], grpc.StatusCode] = {
    InvalidWorkflow: grpc.StatusCode.INVALID_ARGUMENT,
    WorkflowRejected: grpc.StatusCode.INVALID_ARGUMENT,
    BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    BackendProtocolError: grpc.StatusCode.UNAVAILABLE,
}

_MEDIA_TYPES = {
    MediaKind.IMAGE: pb.MEDIA_TYPE_IMAGE,
    MediaKind.AUDIO: pb.MEDIA_TYPE_AUDIO,
    MediaKind.VIDEO: pb.MEDIA_TYPE_VIDEO,
    MediaKind.MODEL: pb.MEDIA_TYPE_MODEL,
    MediaKind.FILE: pb.MEDIA_TYPE_FILE,
}
_FAILURE_CODES = {code: pb.FailureCode.Value(f"FAILURE_CODE_{code.name}") for code in ev.FailureCode}


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[pb.GenerateRequest, pb.RunEvent]
    ) -> AsyncIterator[pb.RunEvent]:
        spec = RunSpec(request.workflow_json, request.workflow_name, request.include_previews)
        try:
            handle = await self.runner.start(spec)
        except GenerationError as exc:
            await _abort(context, exc)
            return
        try:
            async for event in handle.events():
                yield to_proto(event)
        finally:
            handle.cancel("the client cancelled the Generate call")


async def _abort(context: grpc.aio.ServicerContext[pb.GenerateRequest, pb.RunEvent], exc: GenerationError) -> None:
    code = STATUS_FOR_ERROR.get(type(exc), grpc.StatusCode.INTERNAL)
    if isinstance(exc, WorkflowRejected):
        status = rpc_status.to_status(_rich_status(code, str(exc), exc.problems))
        await context.abort(status.code, status.details, status.trailing_metadata)
    await context.abort(code, str(exc))


def _rich_status(code: grpc.StatusCode, message: str, problems: tuple[NodeProblem, ...]) -> status_pb2.Status:
    """A google.rpc.Status carrying one BadRequest field violation per node problem."""
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=f"workflow_json.{p.node_id}" + (f".inputs.{p.input_name}" if p.input_name else ""),
                description=p.describe(),
            )
            for p in problems
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


def output_to_proto(out: ev.StoredOutput) -> pb.Output:
    return pb.Output(
        media_type=_MEDIA_TYPES[out.kind],
        index=out.index,
        url=out.url,
        mime=out.mime,
        size_bytes=out.size_bytes,
        sha256=out.sha256,
        node_id=out.node_id,
        filename=out.filename,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def _failed(body: ev.Failed) -> pb.Failed:
    return pb.Failed(
        code=_FAILURE_CODES[body.code],
        message=body.message,
        node_id=body.node_id,
        node_type=body.node_type,
        exception_type=body.exception_type,
        node_errors=[
            pb.NodeError(
                node_id=p.node_id,
                class_type=p.class_type,
                type=p.type,
                message=p.message,
                details=p.details,
                input_name=p.input_name,
            )
            for p in body.node_errors
        ],
    )


# Domain event class → (RunEvent oneof field, converter).
_CONVERTERS: dict[type, tuple[str, Callable[[Any], Message]]] = {
    ev.Accepted: (
        "accepted",
        lambda b: pb.Accepted(prompt_id=b.prompt_id, backend=b.backend, workflow_name=b.workflow_name),
    ),
    ev.Queued: ("queued", lambda b: pb.Queued(position=b.position)),
    ev.Started: ("started", lambda b: pb.Started(queue_wait=_duration(b.queue_wait_s))),
    ev.NodeStarted: (
        "node_started",
        lambda b: pb.NodeStarted(node_id=b.node_id, class_type=b.class_type, title=b.title),
    ),
    ev.NodeProgress: ("node_progress", lambda b: pb.NodeProgress(node_id=b.node_id, value=b.value, max=b.max)),
    ev.NodesCached: ("nodes_cached", lambda b: pb.NodesCached(node_ids=b.node_ids)),
    ev.OutputReady: ("output_ready", lambda b: pb.OutputReady(output=output_to_proto(b.output))),
    ev.Completed: (
        "completed",
        lambda b: pb.Completed(
            outputs=[output_to_proto(o) for o in b.outputs],
            queue_wait=_duration(b.queue_wait_s),
            execution=_duration(b.execution_s),
        ),
    ),
    ev.Failed: ("failed", _failed),
    ev.Cancelled: ("cancelled", lambda b: pb.Cancelled(reason=b.reason)),
}


def to_proto(event: ev.RunEvent) -> pb.RunEvent:
    msg = pb.RunEvent(run_id=event.run_id, seq=event.seq)
    msg.time.FromDatetime(event.time)
    field, convert = _CONVERTERS[type(event.body)]
    getattr(msg, field).CopyFrom(convert(event.body))
    return msg
