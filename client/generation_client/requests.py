"""Building requests and channels from plain Python values; shared by the async and the blocking client."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from comfygen.v1 import generation_pb2 as pb

Workflow = Mapping[str, Any] | str | Path
"""An API-format workflow: the parsed graph, its JSON text, or the Path of a "Save (API)" file."""
Param = str | int | float | bool | bytes | Path
"""A template parameter: text is parsed by the parameter's type; bytes or a Path are media files."""

SERVICE = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
# Calls that change nothing, or change nothing more when repeated (CancelRun), are retried by gRPC itself
# when the service is UNAVAILABLE (a replica restarting, a connection reset). Generate and Submit are
# not: a repeat would start a second run unless the caller set a request_id (then retrying is safe).
IDEMPOTENT_METHODS = (
    "WatchRun",
    "GetRun",
    "ListRuns",
    "CancelRun",
    "ListTemplates",
    "DescribeTemplate",
    "ListBackends",
)
SERVICE_CONFIG = json.dumps(
    {
        # Spread calls over every address the target resolves to (dns:///name:port with several
        # A records); with one address it behaves like the default.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": SERVICE, "method": method} for method in IDEMPOTENT_METHODS],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
CHANNEL_OPTIONS = (("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1))
DEFAULT_TIMEOUT_S = 30.0
"""Unary calls' default deadline. Streams (generate, watch) have none unless one is given: runs take minutes."""


def param_value(value: Param) -> pb.ParamValue:
    if isinstance(value, Path):
        return pb.ParamValue(data=value.read_bytes())
    if isinstance(value, bytes):
        return pb.ParamValue(data=value)
    if isinstance(value, bool):  # before int: bool is an int
        return pb.ParamValue(flag=value)
    if isinstance(value, int):
        return pb.ParamValue(integer=value)
    if isinstance(value, float):
        return pb.ParamValue(number=value)
    if isinstance(value, str):
        return pb.ParamValue(text=value)
    raise TypeError(f"a parameter value is str, int, float, bool, bytes or Path, not {type(value).__name__}")


def workflow_json(workflow: Workflow) -> str:
    """The workflow's JSON text. A str must be JSON text: a file's name is a Path, never sent as JSON."""
    if isinstance(workflow, Path):
        return workflow.read_text()
    if isinstance(workflow, str):
        try:
            json.loads(workflow)
        except ValueError:
            hint = " (it names a file: pass Path(...) to send the file)" if Path(workflow).is_file() else ""
            raise ValueError(f"workflow: a str must be the workflow's JSON text{hint}") from None
        return workflow
    return json.dumps(workflow)


def run_spec(
    workflow: Workflow | None,
    *,
    template: str = "",
    params: Mapping[str, Param] | None = None,
    name: str = "",
    request_id: str = "",
    include_previews: bool = False,
    queue_timeout: float | None = None,
    execution_timeout: float | None = None,
    retry_on_backend_loss: bool = False,
    backend_labels: Iterable[str] = (),
) -> pb.RunSpec:
    """What to run: a workflow or a template (exactly one of them), and how."""
    if (workflow is None) == (not template):
        raise ValueError("pass either a workflow or a template name")
    if params and not template:
        raise ValueError("params go with a template")
    spec = pb.RunSpec(
        workflow_name=name or (workflow.stem if isinstance(workflow, Path) else ""),
        request_id=request_id,
        include_previews=include_previews,
        retry_on_backend_loss=retry_on_backend_loss,
        backend_labels=list(backend_labels),
        params={key: param_value(value) for key, value in (params or {}).items()},
    )
    if template:
        spec.template = template
    elif workflow is not None:
        spec.workflow_json = workflow_json(workflow)
    for field, seconds in (("queue_timeout", queue_timeout), ("execution_timeout", execution_timeout)):
        if seconds is not None:
            getattr(spec, field).FromTimedelta(timedelta(seconds=seconds))
    return spec


def call_options(
    metadata: tuple[tuple[str, str], ...],
    defaults: tuple[float | None, bool],
    timeout: float | None,
    wait_for_ready: bool | None,
    stream: bool,
) -> dict[str, Any]:
    """A call's keyword arguments: its own timeout and wait_for_ready, else the client's ``defaults``
    (the default timeout applies to unary calls only)."""
    default_timeout, default_wait = defaults
    options: dict[str, Any] = {
        "metadata": metadata,
        "timeout": timeout if timeout is not None or stream else default_timeout,
    }
    if default_wait if wait_for_ready is None else wait_for_ready:
        options["wait_for_ready"] = True  # left out otherwise: gRPC's default, and what every channel takes
    return options


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def channel_credentials(
    tls: bool, ca_pem: bytes | None, client_cert: tuple[bytes, bytes] | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None for plaintext. ``client_cert`` is (private key PEM, certificate chain PEM)."""
    if not (tls or ca_pem or client_cert):
        return None
    key, chain = client_cert if client_cert else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key, certificate_chain=chain)


def event_kind(event: pb.RunEvent) -> str:
    """The event's kind: accepted, queued, started, node_started, node_progress, nodes_cached,
    output_ready, completed, failed or cancelled."""
    return event.WhichOneof("kind") or ""


TERMINAL_KINDS = frozenset({"completed", "failed", "cancelled"})
