"""The gRPC edge: thin RPC methods over the Runner, and the one table from errors to status codes.

What leaves here is bounded: a status (message and details) fits STATUS_BUDGET_BYTES, and a ListRuns
page LIST_PAGE_BUDGET_BYTES, whatever the caller sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from bisect import bisect_right
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from itertools import accumulate
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from comfy_generation.runstore import events as ev
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from generation_service import run_index
from generation_service.convert import (
    backend_to_proto,
    run_to_proto,
    spec_from_proto,
    statuses_from_proto,
    template_to_proto,
)
from generation_service.encoded_events import EncodedEvents
from generation_service.errors import (
    BackendProtocolError,
    BackendUnavailable,
    GenerationError,
    InvalidRequest,
    NoCapableBackend,
    RedisUnavailable,
    RequestConflict,
    RunDamaged,
    RunNotFound,
    StorageUnavailable,
    TemplateNotFound,
    TooManyRuns,
    WorkflowRejected,
    excerpt,
)
from generation_service.metrics import Metrics
from generation_service.runner import Runner
from generation_service.templating import TemplateRequestError

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
    RedisUnavailable: grpc.StatusCode.UNAVAILABLE,
    TooManyRuns: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    BackendProtocolError: grpc.StatusCode.UNAVAILABLE,
}

# The status message and its details travel in trailers (grpc-message percent-encoded, the details
# base64-encoded in grpc-status-details-bin), and a default client refuses more than 8 KiB of metadata:
# past that it sees RESOURCE_EXHAUSTED "Stream removed" instead of the error. Half of that leaves room
# for the other headers and for encodings counted differently.
STATUS_BUDGET_BYTES = 4096
# A default client refuses a message over 4 MiB; runs past this size go to the next page.
LIST_PAGE_BUDGET_BYTES = 2 * 1024 * 1024
MAX_CANCEL_REASON = 500

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
T = TypeVar("T")


def add_to_server(servicer: GenerationServicer, server: grpc.aio.Server) -> None:
    """The generated registration, except for the two event streams: they send each event as bytes
    encoded once (``EncodedEvents``), so their serializer passes bytes through."""
    streams: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate, request_deserializer=pb.GenerateRequest.FromString, response_serializer=_as_is
        ),
        "WatchRun": grpc.unary_stream_rpc_method_handler(
            servicer.WatchRun, request_deserializer=pb.WatchRunRequest.FromString, response_serializer=_as_is
        ),
    }
    # Generic handlers are asked in order: these two answer first, the generated one all the others.
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, streams)])
    pb_grpc.add_GenerationServiceServicer_to_server(servicer, server)


def _as_is(wire: bytes) -> bytes:
    return wire


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, runner: Runner, metrics: Metrics) -> None:
        self.runner = runner
        self.metrics = metrics
        self.encoded = EncodedEvents(metrics.events_encoded)

    async def Generate(  # type: ignore[override]  # it sends encoded replies: see add_to_server
        self, request: pb.GenerateRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """Yields serialized ``GenerateResponse`` messages (see ``add_to_server``)."""
        handle = await _call(context, lambda: self.runner.start(spec_from_proto(request.spec)))
        ended = False
        try:
            async with contextlib.aclosing(self._sent("Generate", handle.events())) as replies:
                async for reply in replies:
                    yield reply
            ended = True
        finally:
            if not ended and request.on_disconnect != pb.DISCONNECT_POLICY_DETACH:
                handle.cancel("the client cancelled the Generate call")

    async def Submit(self, request: pb.SubmitRequest, context: Context) -> pb.SubmitResponse:
        async def submit() -> pb.SubmitResponse:
            handle = await self.runner.start(spec_from_proto(request.spec))
            return pb.SubmitResponse(run=run_to_proto(await self.runner.get(handle.run_id)))

        return await _call(context, submit)

    async def WatchRun(  # type: ignore[override]  # it sends encoded replies: see add_to_server
        self, request: pb.WatchRunRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """Yields serialized ``WatchRunResponse`` messages (see ``add_to_server``)."""
        events = await _call(context, lambda: self.runner.watch(request.run_id, request.after_seq))
        async with contextlib.aclosing(self._sent("WatchRun", events, request.after_seq)) as replies:
            async for reply in replies:
                yield reply

    async def _sent(
        self, rpc: str, events: AsyncIterator[ev.RunEvent], after_seq: int = 0
    ) -> AsyncGenerator[bytes, None]:
        """The events as sent, counted; a seq gap is the progress coalesced for this stream."""
        sent, last_seq = self.metrics.events_sent.labels(rpc=rpc), after_seq
        with self.metrics.streams.labels(rpc=rpc).track_inprogress():
            async for event in events:
                if event.seq > last_seq + 1:
                    self.metrics.progress_coalesced.inc(event.seq - last_seq - 1)
                last_seq = event.seq
                sent.inc()
                yield self.encoded.response(event)

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=await _call(context, lambda: _as_proto(self.runner.get(request.run_id))))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        async def list_runs() -> pb.ListRunsResponse:
            statuses = statuses_from_proto(request.statuses)
            runs, token = await self.runner.list_runs(statuses, request.page_size, request.page_token)
            page, size = pb.ListRunsResponse(), 0
            for i, run in enumerate(runs):
                message = run_to_proto(run)
                size += message.ByteSize() + 8  # plus its tag and length
                if i and size > LIST_PAGE_BUDGET_BYTES:  # a page holds at least one run
                    token = run_index.token_after(runs[i - 1].created, runs[i - 1].run_id)
                    break
                page.runs.append(message)
            page.next_page_token = token
            return page

        return await _call(context, list_runs)

    async def ListTemplates(self, request: pb.ListTemplatesRequest, context: Context) -> pb.ListTemplatesResponse:
        async def list_templates() -> pb.ListTemplatesResponse:
            catalog = self.runner.templates
            if catalog is None:
                return pb.ListTemplatesResponse()
            await asyncio.to_thread(catalog.reload)
            return pb.ListTemplatesResponse(templates=[template_to_proto(t) for t in catalog.templates()])

        return await _call(context, list_templates)

    async def DescribeTemplate(
        self, request: pb.DescribeTemplateRequest, context: Context
    ) -> pb.DescribeTemplateResponse:
        async def describe() -> pb.DescribeTemplateResponse:
            catalog = self.runner.templates
            if catalog is None:
                raise TemplateNotFound("this service has no templates (its templates_dir setting is empty)")
            await asyncio.to_thread(catalog.reload)
            if not any(t.name == request.name for t in catalog.templates()):
                known = ", ".join(t.name for t in catalog.templates()) or "none"
                raise TemplateNotFound(f"no template {excerpt(request.name)!r}; known templates: {known}")
            return pb.DescribeTemplateResponse(template=template_to_proto(catalog.get(request.name)))

        return await _call(context, describe)

    async def ListBackends(self, request: pb.ListBackendsRequest, context: Context) -> pb.ListBackendsResponse:
        members = self.runner.pool.members.values()
        return pb.ListBackendsResponse(backends=[backend_to_proto(m) for m in members])

    async def CancelRun(self, request: pb.CancelRunRequest, context: Context) -> pb.CancelRunResponse:
        async def cancel() -> pb.CancelRunResponse:
            if len(request.reason) > MAX_CANCEL_REASON:  # it is stored with the run and listed with it
                raise InvalidRequest(f"reason must be at most {MAX_CANCEL_REASON} characters")
            reason = request.reason or "cancelled by CancelRun"
            return pb.CancelRunResponse(run=run_to_proto(await self.runner.cancel(request.run_id, reason)))

        return await _call(context, cancel)


async def _as_proto(summary: Awaitable[Any]) -> pb.Run:
    return run_to_proto(await summary)


async def _call(context: Context, operation: Callable[[], Awaitable[T]]) -> T:
    """Run ``operation()``; a GenerationError ends the RPC with its status code (and details), anything
    else with INTERNAL (a bug: logged with its traceback; its text may quote the request, so not sent)."""
    try:
        return await operation()
    except GenerationError as exc:
        code = next((c for cls, c in STATUS_FOR_ERROR.items() if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
        status = fitted_status(code, exc)
        if not status.details:
            await context.abort(code, status.message)
        sent = rpc_status.to_status(status)
        await context.abort(sent.code, sent.details, sent.trailing_metadata)
        raise  # abort raises; this line only tells type checkers
    except Exception:
        logger.exception("an RPC failed unexpectedly")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; the service logged it")
        raise


def fitted_status(code: grpc.StatusCode, exc: GenerationError) -> status_pb2.Status:
    """The status ``exc`` ends an RPC with, within STATUS_BUDGET_BYTES as sent.

    The message takes at most a quarter of the budget (it is sent twice: as grpc-message and inside the
    details); field violations are then dropped from the end, one more violation counting them, until
    the rest fits. Without violations it always fits: a quarter, plus the same bytes again in base64.
    """
    message = _cut(str(exc), STATUS_BUDGET_BYTES // 4)
    violations, omitted = _violations(exc)
    keep = len(violations)
    while True:
        left_out = omitted + len(violations) - keep
        status = status_pb2.Status(
            code=code.value[0], message=message, details=_details(exc, violations[:keep], left_out)
        )
        if keep == 0 or sent_size(status) <= STATUS_BUDGET_BYTES:
            return status
        keep -= 1


def sent_size(status: status_pb2.Status) -> int:
    """Bytes of grpc-message and grpc-status-details-bin on the wire: the message percent-encoded, the
    serialized status (when there are details) base64-encoded."""
    details = 4 * math.ceil(status.ByteSize() / 3) if status.details else 0
    return sum(map(_percent_encoded_size, status.message)) + details


def _percent_encoded_size(char: str) -> int:
    """grpc-message sends printable ASCII as is, and every other byte (and '%') as %XX."""
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in char.encode())


def _cut(message: str, limit: int) -> str:
    """``message`` cut with an ellipsis to at most ``limit`` bytes percent-encoded."""
    ends = list(accumulate(map(_percent_encoded_size, message)))
    if not ends or ends[-1] <= limit:
        return message
    return message[: bisect_right(ends, limit - _percent_encoded_size("…"))] + "…"


def _violations(exc: GenerationError) -> tuple[list[error_details_pb2.BadRequest.FieldViolation], int]:
    """One field violation per problem the error names, and how many problems it left out."""
    Violation = error_details_pb2.BadRequest.FieldViolation
    if isinstance(exc, WorkflowRejected):
        return [Violation(field=p.field, description=p.describe()) for p in exc.problems], exc.omitted
    if isinstance(exc, TemplateRequestError):
        return [Violation(field=p.field, description=p.description) for p in exc.problems], exc.omitted
    return [], 0


def _details(
    exc: GenerationError, violations: list[error_details_pb2.BadRequest.FieldViolation], omitted: int
) -> list[any_pb2.Any]:
    """The google.rpc details that tell a client what to do: the fields to fix, or when to retry."""
    message: Message
    if isinstance(exc, WorkflowRejected | TemplateRequestError):
        if omitted:
            root = "workflow_json" if isinstance(exc, WorkflowRejected) else "params"
            violations = [*violations, _omitted(root, omitted)]
        message = error_details_pb2.BadRequest(field_violations=violations)
    elif isinstance(exc, TooManyRuns):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(exc.retry_after_s * 1e9))
        message = error_details_pb2.RetryInfo(retry_delay=delay)
    else:
        return []
    detail = any_pb2.Any()
    detail.Pack(message)
    return [detail]


def _omitted(field: str, count: int) -> error_details_pb2.BadRequest.FieldViolation:
    return error_details_pb2.BadRequest.FieldViolation(
        field=field, description=f"{count} more problem{'s' if count > 1 else ''} left out of this error"
    )
