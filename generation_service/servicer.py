"""The gRPC edge: thin RPC methods over the Runner, and the one table from errors to status codes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from generation_service.convert import (
    backend_to_proto,
    run_to_proto,
    spec_from_proto,
    statuses_from_proto,
    template_to_proto,
    to_proto,
)
from generation_service.errors import (
    BackendProtocolError,
    BackendUnavailable,
    GenerationError,
    InvalidRequest,
    NoCapableBackend,
    RequestConflict,
    RunDamaged,
    RunNotFound,
    StorageUnavailable,
    TemplateNotFound,
    TooManyRuns,
    WorkflowRejected,
)
from generation_service.metrics import Metrics
from generation_service.runner import Runner
from generation_service.templating import TemplateRequestError
from generation_service.v1 import generation_pb2 as pb
from generation_service.v1 import generation_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

STATUS_FOR_ERROR: dict[type[GenerationError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    WorkflowRejected: grpc.StatusCode.INVALID_ARGUMENT,
    RunNotFound: grpc.StatusCode.NOT_FOUND,
    TemplateNotFound: grpc.StatusCode.NOT_FOUND,
    TemplateRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    RequestConflict: grpc.StatusCode.FAILED_PRECONDITION,
    RunDamaged: grpc.StatusCode.DATA_LOSS,
    NoCapableBackend: grpc.StatusCode.FAILED_PRECONDITION,
    StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
    TooManyRuns: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    BackendProtocolError: grpc.StatusCode.UNAVAILABLE,
}

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, runner: Runner, metrics: Metrics) -> None:
        self.runner = runner
        self.metrics = metrics

    async def Generate(self, request: pb.GenerateRequest, context: Context) -> AsyncIterator[pb.RunEvent]:
        handle = await _call(context, lambda: self.runner.start(spec_from_proto(request)))
        ended = False
        try:
            with self.metrics.streams.labels(rpc="Generate").track_inprogress():
                async for event in handle.events():
                    yield to_proto(event)
            ended = True
        finally:
            if not ended and request.on_disconnect != pb.DISCONNECT_POLICY_DETACH:
                handle.cancel("the client cancelled the Generate call")

    async def Submit(self, request: pb.GenerateRequest, context: Context) -> pb.Run:
        async def submit() -> pb.Run:
            handle = await self.runner.start(spec_from_proto(request))
            return run_to_proto(await self.runner.get(handle.run_id))

        return await _call(context, submit)

    async def WatchRun(self, request: pb.WatchRunRequest, context: Context) -> AsyncIterator[pb.RunEvent]:
        events = await _call(context, lambda: self.runner.watch(request.run_id, request.after_seq))
        with self.metrics.streams.labels(rpc="WatchRun").track_inprogress():
            async for event in events:
                yield to_proto(event)

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.Run:
        return await _call(context, lambda: _as_proto(self.runner.get(request.run_id)))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        async def list_runs() -> pb.ListRunsResponse:
            statuses = statuses_from_proto(request.statuses)
            runs, token = await self.runner.list_runs(statuses, request.page_size, request.page_token)
            return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs], next_page_token=token)

        return await _call(context, list_runs)

    async def ListTemplates(self, request: pb.ListTemplatesRequest, context: Context) -> pb.ListTemplatesResponse:
        async def list_templates() -> pb.ListTemplatesResponse:
            catalog = self.runner.templates
            if catalog is None:
                return pb.ListTemplatesResponse()
            await asyncio.to_thread(catalog.reload)
            return pb.ListTemplatesResponse(templates=[template_to_proto(t) for t in catalog.templates()])

        return await _call(context, list_templates)

    async def DescribeTemplate(self, request: pb.DescribeTemplateRequest, context: Context) -> pb.Template:
        async def describe() -> pb.Template:
            catalog = self.runner.templates
            if catalog is None:
                raise TemplateNotFound("this service has no templates (its templates_dir setting is empty)")
            await asyncio.to_thread(catalog.reload)
            if not any(t.name == request.name for t in catalog.templates()):
                known = ", ".join(t.name for t in catalog.templates()) or "none"
                raise TemplateNotFound(f"no template {request.name!r}; known templates: {known}")
            return template_to_proto(catalog.get(request.name))

        return await _call(context, describe)

    async def ListBackends(self, request: pb.ListBackendsRequest, context: Context) -> pb.ListBackendsResponse:
        members = self.runner.pool.members.values()
        return pb.ListBackendsResponse(backends=[backend_to_proto(m) for m in members])

    async def CancelRun(self, request: pb.CancelRunRequest, context: Context) -> pb.Run:
        reason = request.reason or "cancelled by CancelRun"
        return await _call(context, lambda: _as_proto(self.runner.cancel(request.run_id, reason)))


async def _as_proto(summary: Awaitable[Any]) -> pb.Run:
    return run_to_proto(await summary)


async def _call(context: Context, operation: Callable[[], Awaitable[T]]) -> T:
    """Run ``operation()``; a GenerationError ends the RPC with its status code (and details)."""
    try:
        return await operation()
    except GenerationError as exc:
        code = next((c for cls, c in STATUS_FOR_ERROR.items() if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
        detail = _detail(exc)
        if detail is None:
            await context.abort(code, str(exc))
        status = rpc_status.to_status(status_pb2.Status(code=code.value[0], message=str(exc), details=[detail]))
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise  # abort raises; this line only tells type checkers


def _detail(exc: GenerationError) -> any_pb2.Any | None:
    """The google.rpc detail that tells a client what to do: the fields to fix, or when to retry."""
    message: Message
    if isinstance(exc, WorkflowRejected):
        message = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=f"workflow_json.{p.node_id}" + (f".inputs.{p.input_name}" if p.input_name else ""),
                    description=p.describe(),
                )
                for p in exc.problems
            ]
        )
    elif isinstance(exc, TemplateRequestError):
        message = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=p.field, description=p.message) for p in exc.problems
            ]
        )
    elif isinstance(exc, TooManyRuns):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(exc.retry_after_s * 1e9))
        message = error_details_pb2.RetryInfo(retry_delay=delay)
    else:
        return None
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail
