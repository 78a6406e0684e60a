"""Events and runs as plain JSON-ready dicts: the one shape genctl --json, the examples and anything
else that prints or relays them use.

The shape: the .proto's snake_case field names; integers as JSON numbers (also the 64-bit ones, which
protobuf's own JSON mapping turns into strings); enum values by their short lowercase name
(``"completed"``, ``"audio"``, ``"execution_error"``); times as RFC 3339 strings; durations as seconds
(a float); a template parameter value as the plain value it holds (bytes as their base64 text). Unset
message fields are left out; scalars are always present (with their zero value)."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from comfygen.v1 import generation_pb2 as pb

# Field descriptors are typed loosely: the C (upb) and the Python implementation have distinct classes.
Field = Any


def event_to_dict(event: pb.RunEvent) -> dict[str, Any]:
    """A flat dict: ``run_id``, ``seq``, ``time``, ``type`` (the event's kind), then the event's own fields
    (an ``output_ready`` event's output fields at the top level)."""
    kind = event.WhichOneof("kind") or ""
    body = message_to_dict(getattr(event, kind)) if kind else {}
    if kind == "output_ready":
        body = body.get("output", {})
    return {"run_id": event.run_id, "seq": event.seq, "time": event.time.ToJsonString(), "type": kind, **body}


def message_to_dict(message: Message) -> dict[str, Any]:
    """Any message of the service (a Run, a Template, a Backend ...) in the shape above."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.containing_oneof is not None and message.WhichOneof(field.containing_oneof.name) != field.name:
            continue
        if _is_message(field) and not _repeated(field) and not message.HasField(field.name):
            continue
        if field.has_presence and not _repeated(field) and not message.HasField(field.name):
            continue  # an unset `optional` scalar (a bound a parameter does not have)
        out[field.name] = _field_value(field, getattr(message, field.name))
    return out


def _field_value(field: Field, value: Any) -> Any:
    if _is_message(field) and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _single(value_field, item) for key, item in value.items()}
    if _repeated(field):
        return [_single(field, item) for item in value]
    return _single(field, value)


def _single(field: Field, value: Any) -> Any:
    if field.enum_type is not None:
        return short_enum_name(field.enum_type, value)
    if isinstance(value, Timestamp):
        return value.ToJsonString()
    if isinstance(value, Duration):
        return value.seconds + value.nanos / 1e9
    if isinstance(value, pb.ParamValue):
        return param_to_plain(value)
    if isinstance(value, Message):
        return message_to_dict(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def param_to_plain(value: pb.ParamValue) -> str | int | float | bool | bytes | None:
    """The value a ParamValue holds (None when it holds none)."""
    kind = value.WhichOneof("kind")
    if kind == "data":
        return base64.b64encode(value.data).decode()
    result: str | int | float | bool | None = getattr(value, kind) if kind else None
    return result


def short_enum_name(enum: EnumDescriptor, number: int) -> str:
    """``RUN_STATUS_COMPLETED`` → ``completed``: the value's name without its enum's prefix, lowercase."""
    prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in enum.name).lstrip("_") + "_"
    value = enum.values_by_number.get(number)
    return value.name.removeprefix(prefix).lower() if value is not None else str(number)


def _is_message(field: Field) -> bool:
    return field.message_type is not None


def _repeated(field: Field) -> bool:
    # `is_repeated` from protobuf 6 on (`label` is gone in 7); `label` before it.
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else bool(field.label == FieldDescriptor.LABEL_REPEATED)
