"""What genctl prints: a live progress line for people, JSON for scripts."""

from __future__ import annotations

from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from generation_service.v1 import generation_pb2 as pb


def message_to_json(message: Message) -> dict[str, Any]:
    """A protobuf message as JSON with the .proto's field names and short enum names."""
    data: dict[str, Any] = _short_enums(json_format.MessageToDict(message, preserving_proto_field_name=True))
    return data


def _short_enums(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _short_enums(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short_enums(v) for v in value]
    if isinstance(value, str):
        for prefix in ("MEDIA_TYPE_", "FAILURE_CODE_", "RUN_STATUS_"):
            if value.startswith(prefix):
                return value.removeprefix(prefix).lower()
    return value


def event_to_json(event: pb.RunEvent) -> dict[str, Any]:
    """A flat JSON object: run_id, seq, time, type, then the event's fields (outputs' fields at top level)."""
    kind = event.WhichOneof("kind") or ""
    body = (
        json_format.MessageToDict(
            getattr(event, kind), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        if kind
        else {}
    )
    if kind == "output_ready":
        body = body.pop("output")
    for output in [body, *body.get("outputs", [])] if kind in ("output_ready", "completed") else []:
        if "media_type" in output:
            output["media_type"] = output["media_type"].removeprefix("MEDIA_TYPE_").lower()
    if kind == "failed":
        body["code"] = body["code"].removeprefix("FAILURE_CODE_").lower()
    return {"run_id": event.run_id, "seq": event.seq, "time": event.time.ToJsonString(), "type": kind, **body}


class ProgressView:
    """Human output: one rewritten status line on a terminal, plain lines otherwise."""

    def __init__(self, err: TextIO, out: TextIO) -> None:
        self.err, self.out = err, out
        self.live = err.isatty()
        self.node = ""

    def show(self, event: pb.RunEvent) -> None:
        kind = event.WhichOneof("kind")
        if kind is not None:
            getattr(self, f"_{kind}")(event)

    def _accepted(self, event: pb.RunEvent) -> None:
        self._line(f"run {event.run_id} accepted (prompt {event.accepted.prompt_id})", final=True)

    def _queued(self, event: pb.RunEvent) -> None:
        self._line(f"queued, {event.queued.position} ahead")

    def _started(self, event: pb.RunEvent) -> None:
        self._line("started")

    def _node_started(self, event: pb.RunEvent) -> None:
        node = event.node_started
        self.node = node.title or node.class_type
        self._line(f"node {node.node_id} {self.node}")

    def _node_progress(self, event: pb.RunEvent) -> None:
        p = event.node_progress
        width = 30
        done = int(width * p.value / p.max) if p.max else 0
        self._line(f"node {p.node_id} {self.node} [{'#' * done}{'.' * (width - done)}] {p.value}/{p.max}")

    def _nodes_cached(self, event: pb.RunEvent) -> None:
        self._line(f"cached: node {', '.join(event.nodes_cached.node_ids)}")

    def _output_ready(self, event: pb.RunEvent) -> None:
        o = event.output_ready.output
        self._line(f"output {o.filename} ({o.mime}, {o.size_bytes} bytes)", final=True)

    def _completed(self, event: pb.RunEvent) -> None:
        c = event.completed
        self._line(
            f"completed in {c.execution.ToTimedelta().total_seconds():.2f} s "
            f"(queued {c.queue_wait.ToTimedelta().total_seconds():.2f} s)",
            final=True,
        )
        for o in c.outputs:
            print(o.url, file=self.out)

    def _failed(self, event: pb.RunEvent) -> None:
        f = event.failed
        where = f" in node {f.node_id} ({f.node_type})" if f.node_id else ""
        self._line(f"FAILED{where}: {f.message}", final=True)

    def _cancelled(self, event: pb.RunEvent) -> None:
        self._line(f"cancelled: {event.cancelled.reason}", final=True)

    def _line(self, text: str, final: bool = False) -> None:
        if self.live:
            self.err.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.err.write(text + "\n")
        self.err.flush()
