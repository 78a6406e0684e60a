"""Domain values to and from protobuf: the only place that knows both."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from comfy_generation.runstore import MediaKind, RunStatus
from comfy_generation.runstore import events as ev
from comfygen.v1 import generation_pb2 as pb
from generation_service.errors import MAX_MESSAGE_CHARS, MAX_PROBLEMS, InvalidRequest, excerpt
from generation_service.pool import Member
from generation_service.run_summary import RunSummary
from generation_service.runner import RunSpec
from generation_service.templating import ParamValue, Scalar, Template

_MEDIA_TYPES = {
    MediaKind.IMAGE: pb.MEDIA_TYPE_IMAGE,
    MediaKind.AUDIO: pb.MEDIA_TYPE_AUDIO,
    MediaKind.VIDEO: pb.MEDIA_TYPE_VIDEO,
    MediaKind.MODEL: pb.MEDIA_TYPE_MODEL,
    MediaKind.FILE: pb.MEDIA_TYPE_FILE,
}
_FAILURE_CODES = {code: pb.FailureCode.Value(f"FAILURE_CODE_{code.name}") for code in ev.FailureCode}
_RUN_STATUSES = {status: pb.RunStatus.Value(f"RUN_STATUS_{status.name}") for status in RunStatus}
_STATUS_FROM_PROTO = {value: status for status, value in _RUN_STATUSES.items()}
MAX_TIMEOUT_S = 7 * 24 * 3600  # queue_timeout and execution_timeout: a week is past any real GPU queue or job
MAX_WORKFLOW_NAME = 256  # it is recorded with the run and listed with it


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
    # Bounded here too: a node's exception message (recorded as is) may quote the node's whole input,
    # and this goes into events and ListRuns pages.
    return pb.Failed(
        code=_FAILURE_CODES[body.code],
        message=excerpt(body.message, MAX_MESSAGE_CHARS),
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
            for p in body.node_errors[:MAX_PROBLEMS]
        ],
    )


_BASES = {basis: pb.EstimateBasis.Value(f"ESTIMATE_BASIS_{basis.name}") for basis in ev.EstimateBasis}


def estimate_to_proto(estimate: ev.Estimate | None) -> pb.Estimate | None:
    if estimate is None:
        return None
    return pb.Estimate(
        completion=_timestamp(estimate.completion),
        remaining=_duration(estimate.remaining_s),
        basis=_BASES[estimate.basis],
    )


# Domain event class → (RunEvent oneof field, converter).
_CONVERTERS: dict[type, tuple[str, Callable[[Any], Message]]] = {
    ev.Accepted: (
        "accepted",
        lambda b: pb.Accepted(
            prompt_id=b.prompt_id,
            backend=b.backend,
            workflow_name=b.workflow_name,
            template=b.template,
            seeds=dict(b.seeds),
        ),
    ),
    ev.Queued: (
        "queued",
        lambda b: pb.Queued(position=b.position, backend=b.backend, estimate=estimate_to_proto(b.estimate)),
    ),
    ev.Started: (
        "started",
        lambda b: pb.Started(queue_wait=_duration(b.queue_wait_s), estimate=estimate_to_proto(b.estimate)),
    ),
    ev.NodeStarted: (
        "node_started",
        lambda b: pb.NodeStarted(
            node_id=b.node_id,
            class_type=b.class_type,
            title=b.title,
            overall=b.overall,
            estimate=estimate_to_proto(b.estimate),
        ),
    ),
    ev.NodeProgress: (
        "node_progress",
        lambda b: pb.NodeProgress(
            node_id=b.node_id, value=b.value, max=b.max, overall=b.overall, estimate=estimate_to_proto(b.estimate)
        ),
    ),
    ev.Preview: (
        "preview",
        lambda b: pb.Preview(
            node_id=b.node_id,
            step=b.step,
            max=b.max,
            mime=b.mime,
            width=b.width,
            height=b.height,
            image=b.image,
            number=b.number,
        ),
    ),
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


def _timestamp(iso: str) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(datetime.fromisoformat(iso.replace("Z", "+00:00")))
    return value


def run_to_proto(run: RunSummary) -> pb.Run:
    msg = pb.Run(
        run_id=run.run_id,
        status=_RUN_STATUSES[run.status],
        prompt_id=run.prompt_id,
        workflow_name=run.workflow_name,
        backend=run.backend,
        created=_timestamp(run.created),
        outputs=[output_to_proto(o) for o in run.outputs],
        cancel_reason=run.cancel_reason,
        last_seq=run.last_seq,
        request_id=run.request_id,
        template=run.template,
        params={name: _recorded_param(value) for name, value in run.params.items()},
        estimate=estimate_to_proto(run.estimate),
    )
    if run.finished:
        msg.finished.CopyFrom(_timestamp(run.finished))
    if run.queue_wait_s is not None:
        msg.queue_wait.CopyFrom(_duration(run.queue_wait_s))
    if run.execution_s is not None:
        msg.execution.CopyFrom(_duration(run.execution_s))
    if run.failure is not None:
        msg.failure.CopyFrom(_failed(run.failure))
    return msg


def statuses_from_proto(values: Any) -> frozenset[RunStatus]:
    try:
        return frozenset(_STATUS_FROM_PROTO[v] for v in values)
    except KeyError as exc:
        raise InvalidRequest(f"statuses: unknown run status {exc.args[0]}") from exc


def param_from_proto(value: pb.ParamValue) -> ParamValue:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise InvalidRequest("a template parameter value is empty: set text, integer, number, flag or data")
    result: ParamValue = getattr(value, kind)
    return result


def _recorded_param(value: Any) -> pb.ParamValue:
    # A record's params are JSON values; templates only record scalars (media as their description).
    return param_to_proto(value) if isinstance(value, str | int | float) else pb.ParamValue(text=json.dumps(value))


def param_to_proto(value: Scalar) -> pb.ParamValue:
    if isinstance(value, bool):  # before int: bool is an int
        return pb.ParamValue(flag=value)
    if isinstance(value, int):
        return pb.ParamValue(integer=value)
    if isinstance(value, float):
        return pb.ParamValue(number=value)
    return pb.ParamValue(text=str(value))


def template_to_proto(template: Template) -> pb.Template:
    msg = pb.Template(name=template.name, description=template.description, media=_MEDIA_TYPES[template.media])
    for param in template.params:
        out = msg.parameters.add(
            name=param.name,
            type=pb.ParameterType.Value(f"PARAMETER_TYPE_{param.type.name}"),
            description=param.description,
            required=param.required,
            choices=[param_to_proto(c) for c in param.choices],
        )
        if param.default is not None:
            out.default_value.CopyFrom(param_to_proto(param.default))
        if param.minimum is not None:
            out.min = float(param.minimum)
        if param.maximum is not None:
            out.max = float(param.maximum)
        if param.step is not None:
            out.step = param.step
        if param.max_length is not None:
            out.max_length = param.max_length
    return msg


def spec_from_proto(request: pb.RunSpec) -> RunSpec:
    timeouts = {}
    for field in ("queue_timeout", "execution_timeout"):
        if request.HasField(field):
            value = getattr(request, field)
            seconds = value.seconds + value.nanos / 1e9  # not ToTimedelta(): it overflows past 10**9 days
            if not 0 < seconds <= MAX_TIMEOUT_S:
                raise InvalidRequest(f"{field} must be more than 0 s and at most {MAX_TIMEOUT_S} s, got {seconds:g} s")
            timeouts[f"{field}_s"] = seconds
    if len(request.workflow_name) > MAX_WORKFLOW_NAME:
        raise InvalidRequest(f"workflow_name must be at most {MAX_WORKFLOW_NAME} characters")
    return RunSpec(
        workflow_json=request.workflow_json,
        workflow_name=request.workflow_name,
        include_previews=request.include_previews,
        request_id=request.request_id,
        template=request.template,
        params={name: param_from_proto(value) for name, value in request.params.items()},
        retry_on_backend_loss=request.retry_on_backend_loss,
        backend_labels=tuple(request.backend_labels),
        live_previews=request.live_previews,
        keep_preview=request.keep_preview,
        **timeouts,
    )


def backend_to_proto(member: Member) -> pb.Backend:
    config = member.config
    return pb.Backend(
        name=member.name,
        url=member.client.public_url,
        up=bool(member.up),
        queue_length=member.queue_length,
        runs_in_flight=len(member.runs),
        node_class_count=len(member.node_classes or ()),
        last_error=member.last_error,
        weight=config.weight,
        labels=sorted(config.labels),
        swarm_backend_id=config.swarm_backend_id,
    )
