"""Errors of the client library: one class per gRPC status a caller can act on."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from comfygen.v1 import generation_pb2 as pb


class GenerationClientError(Exception):
    """A call failed. ``code`` is the gRPC status; ``violations`` maps each field to fix (for a
    workflow, ``workflow_json.<node>.inputs.<input>``; for a template, ``params.<name>``) to what is
    wrong with it; ``retry_after`` is the server's hint in seconds, when it gave one."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.violations = violations or {}
        self.retry_after = retry_after


class InvalidRequestError(GenerationClientError):
    """INVALID_ARGUMENT: the workflow, template or parameters are wrong; see ``violations``."""


class NotFoundError(GenerationClientError):
    """NOT_FOUND: no such run or template."""


class ConflictError(GenerationClientError):
    """FAILED_PRECONDITION: the request_id was already used for a different request."""


class OverloadedError(GenerationClientError):
    """RESOURCE_EXHAUSTED: too many runs in flight; retry after ``retry_after`` seconds."""


class UnavailableError(GenerationClientError):
    """UNAVAILABLE: the service or its backend cannot be reached now; retrying later may work."""


class AuthenticationError(GenerationClientError):
    """UNAUTHENTICATED: a missing or wrong bearer token."""


class RunFailedError(Exception):
    """``run()`` only: the call went through but the run ended ``failed`` or ``cancelled``. ``run`` is the
    final Run: ``run.failure`` (code, message, node) or ``run.cancel_reason`` says why."""

    def __init__(self, run: pb.Run) -> None:
        if run.status == pb.RUN_STATUS_CANCELLED:
            why = f"cancelled: {run.cancel_reason}"
        else:
            why = f"failed ({pb.FailureCode.Name(run.failure.code)}): {run.failure.message}"
        super().__init__(f"run {run.run_id} {why}")
        self.run = run


_CLASSES: dict[grpc.StatusCode, type[GenerationClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: ConflictError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
}


def translate(error: Any) -> GenerationClientError:
    """The client error for a grpc.RpcError (sync or aio), with its rich details unpacked."""
    code: grpc.StatusCode = error.code()
    violations: dict[str, str] = {}
    retry_after = None
    # Iterated as (key, value) pairs: grpcio 1.63's aio Metadata cannot be turned into a dict.
    raw = next((v for k, v in error.trailing_metadata() or () if k == "grpc-status-details-bin"), None)
    if isinstance(raw, bytes):
        for detail in status_pb2.Status.FromString(raw).details:
            bad, retry = error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
            if detail.Unpack(bad):
                violations.update({v.field: v.description for v in bad.field_violations})
            elif detail.Unpack(retry):
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return _CLASSES.get(code, GenerationClientError)(code, str(error.details() or ""), violations, retry_after)
