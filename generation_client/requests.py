"""Building requests from plain Python values; shared by the async and the blocking client."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from generation_service.v1 import generation_pb2 as pb

Workflow = Mapping[str, Any] | str | Path
"""An API-format workflow: the parsed graph, its JSON text, or the path of a "Save (API)" file."""
Param = str | int | float | bool | bytes | Path
"""A template parameter: text is parsed by the parameter's type; bytes or a Path are media files."""


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
    return pb.ParamValue(text=value)


def generate_request(
    workflow: Workflow | None = None,
    *,
    template: str = "",
    params: Mapping[str, Param] | None = None,
    name: str = "",
    request_id: str = "",
    include_previews: bool = False,
    detach: bool = False,
    queue_timeout: float | None = None,
    execution_timeout: float | None = None,
) -> pb.GenerateRequest:
    """A GenerateRequest for a workflow or a template (exactly one of them)."""
    if (workflow is None) == (not template):
        raise ValueError("pass either a workflow or a template name")
    request = pb.GenerateRequest(
        workflow_name=name,
        request_id=request_id,
        include_previews=include_previews,
        on_disconnect=pb.DISCONNECT_POLICY_DETACH if detach else pb.DISCONNECT_POLICY_CANCEL,
        params={key: param_value(value) for key, value in (params or {}).items()},
    )
    if template:
        request.template = template
    elif isinstance(workflow, Path):
        request.workflow_json = workflow.read_text()
        request.workflow_name = name or workflow.stem
    elif isinstance(workflow, str):
        request.workflow_json = workflow
    else:
        request.workflow_json = json.dumps(workflow)
    for field, seconds in (("queue_timeout", queue_timeout), ("execution_timeout", execution_timeout)):
        if seconds is not None:
            getattr(request, field).FromTimedelta(timedelta(seconds=seconds))
    return request


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
