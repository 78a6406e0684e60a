"""A run's events: the domain values the service streams, and their line in the run's ``events.jsonl``.

One journal line is ``{"seq": N, "time": ISO-8601, "type": "<kind>", "data": {...}}``; ``data`` holds the
body's fields under the names below (enums by value). ``RunEvent.to_json`` writes a line and
``RunEvent.from_json`` reads one back, raising only ``DamagedRecord``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from comfy_generation.runstore.files import compact_text
from comfy_generation.runstore.formats import MediaKind
from comfy_generation.runstore.schema import DamagedRecord, Fields, cut_text, excerpt, loads

EVENTS_FILE = "events.jsonl"
DESCRIPTION_CHARS = 400  # one validation problem's description


class FailureCode(StrEnum):
    """Why a run failed (the proto's FailureCode)."""

    INVALID_WORKFLOW = "invalid_workflow"
    EXECUTION_ERROR = "execution_error"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    PROMPT_LOST = "prompt_lost"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    OUTPUT_FAILED = "output_failed"
    STORAGE_ERROR = "storage_error"
    BACKEND_LOST = "backend_lost"
    INTERNAL = "internal"


@dataclass(frozen=True)
class NodeProblem:
    """One validation problem in one node, as ComfyUI reports it."""

    node_id: str
    class_type: str
    type: str
    message: str
    details: str
    input_name: str

    def __post_init__(self) -> None:
        # Every field may echo the caller's workflow (an unknown class type of any length, the value
        # that failed): each is cut here, so no description, status or stored failure can grow with it.
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, cut_text(str(getattr(self, f.name))))

    @property
    def field(self) -> str:
        """Where the problem is, for a ``google.rpc.BadRequest`` field violation:
        ``workflow_json.<node>.inputs.<input>``, ``workflow_json.<node>`` or ``workflow_json``."""
        where = f"workflow_json.{self.node_id}" if self.node_id else "workflow_json"
        return f"{where}.inputs.{self.input_name}" if self.input_name else where

    def describe(self) -> str:
        where = f"node {self.node_id} ({self.class_type})" if self.node_id else "workflow"
        if self.input_name:
            where += f" input {self.input_name!r}"
        detail = f": {self.details}" if self.details and self.details != self.input_name else ""
        return cut_text(f"{where}: {self.message}{detail} [{self.type}]", DESCRIPTION_CHARS)

    @classmethod
    def from_fields(cls, f: Fields) -> NodeProblem:
        return cls(
            *(f.text(name, "") for name in ("node_id", "class_type", "type", "message", "details", "input_name"))
        )


@dataclass(frozen=True)
class StoredOutput:
    """One output file, stored in the run's folder."""

    kind: MediaKind
    index: int  # among this run's outputs of the same kind
    url: str
    mime: str
    size_bytes: int
    sha256: str
    node_id: str
    filename: str

    @classmethod
    def from_fields(cls, f: Fields) -> StoredOutput:
        return cls(
            kind=f.choice("kind", MediaKind),
            index=f.integer("index"),
            url=f.text("url"),
            mime=f.text("mime"),
            size_bytes=f.integer("size_bytes"),
            sha256=f.text("sha256"),
            node_id=f.text("node_id"),
            filename=f.text("filename"),
        )


class EstimateBasis(StrEnum):
    """What an estimate rests on (the proto's EstimateBasis)."""

    HISTORY = "history"
    STEP_RATE_AND_HISTORY = "step_rate_and_history"
    STEP_RATE = "step_rate"


@dataclass(frozen=True)
class Estimate:
    """When the run is expected to complete; events carry none where there is no basis for one."""

    completion: str  # ISO-8601 UTC
    remaining_s: float
    basis: EstimateBasis

    @classmethod
    def from_fields(cls, f: Fields) -> Estimate:
        return cls(f.text("completion"), _number(f, "remaining_s"), f.choice("basis", EstimateBasis))


def _estimate(f: Fields) -> Estimate | None:
    child = f.child("estimate", None)
    return Estimate.from_fields(child) if child is not None else None


@dataclass(frozen=True)
class Accepted:
    prompt_id: str
    backend: str
    workflow_name: str
    template: str = ""
    seeds: tuple[tuple[str, int], ...] = ()  # (parameter name, value), drawn ones included


@dataclass(frozen=True)
class Queued:
    position: int
    backend: str = ""  # set when the run moved to this backend (its first backend is in Accepted)
    estimate: Estimate | None = None


@dataclass(frozen=True)
class Started:
    queue_wait_s: float
    estimate: Estimate | None = None


@dataclass(frozen=True)
class NodeStarted:
    node_id: str
    class_type: str
    title: str
    overall: float = 0.0  # fraction of the run done: nodes finished over nodes to execute
    estimate: Estimate | None = None


@dataclass(frozen=True)
class NodeProgress:
    node_id: str
    value: int
    max: int
    overall: float = 0.0  # (nodes finished + value / max) over nodes to execute
    estimate: Estimate | None = None


@dataclass(frozen=True)
class Preview:
    """A live preview image: never journaled; its event's seq is that of the latest event before it."""

    node_id: str
    step: int
    max: int
    mime: str
    width: int
    height: int
    image: bytes = field(repr=False)
    number: int  # 1, 2, 3 ... among the run's previews


@dataclass(frozen=True)
class NodesCached:
    node_ids: tuple[str, ...]


@dataclass(frozen=True)
class OutputReady:
    output: StoredOutput


@dataclass(frozen=True)
class Completed:
    outputs: tuple[StoredOutput, ...]
    queue_wait_s: float
    execution_s: float


@dataclass(frozen=True)
class Failed:
    code: FailureCode
    message: str
    node_id: str = ""
    node_type: str = ""
    exception_type: str = ""
    node_errors: tuple[NodeProblem, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "code": self.code.value}

    @classmethod
    def from_fields(cls, f: Fields) -> Failed:
        return cls(
            code=f.choice("code", FailureCode),
            message=f.text("message"),
            node_id=f.text("node_id", ""),
            node_type=f.text("node_type", ""),
            exception_type=f.text("exception_type", ""),
            node_errors=f.items("node_errors", NodeProblem.from_fields),
        )


@dataclass(frozen=True)
class Cancelled:
    reason: str


EventBody = (
    Accepted
    | Queued
    | Started
    | NodeStarted
    | NodeProgress
    | NodesCached
    | OutputReady
    | Completed
    | Failed
    | Cancelled
    | Preview
)
TERMINAL = (Completed, Failed, Cancelled)


def _number(f: Fields, name: str) -> float:
    value = f.number(name)
    assert value is not None  # required: number() raises when it is missing
    return value


# Journal ``type`` → how its ``data`` is read. Writing is generic (each field as dataclasses.asdict gives it).
_READERS: dict[str, Any] = {
    "accepted": lambda f: Accepted(
        f.text("prompt_id"),
        f.text("backend"),
        f.text("workflow_name"),
        f.text("template", ""),
        tuple(_seed_pair(f, i, pair) for i, pair in enumerate(f.values("seeds"))),
    ),
    "queued": lambda f: Queued(f.integer("position"), f.text("backend", ""), _estimate(f)),
    "started": lambda f: Started(_number(f, "queue_wait_s"), _estimate(f)),
    "node_started": lambda f: NodeStarted(
        f.text("node_id"), f.text("class_type"), f.text("title"), f.number("overall", 0.0) or 0.0, _estimate(f)
    ),
    "node_progress": lambda f: NodeProgress(
        f.text("node_id"), f.integer("value"), f.integer("max"), f.number("overall", 0.0) or 0.0, _estimate(f)
    ),
    "nodes_cached": lambda f: NodesCached(f.strings("node_ids")),
    "output_ready": lambda f: OutputReady(StoredOutput.from_fields(_child(f, "output"))),
    "completed": lambda f: Completed(
        f.items("outputs", StoredOutput.from_fields), _number(f, "queue_wait_s"), _number(f, "execution_s")
    ),
    "failed": Failed.from_fields,
    "cancelled": lambda f: Cancelled(f.text("reason")),
}
_TYPE_NAMES: dict[type, str] = {
    Accepted: "accepted",
    Queued: "queued",
    Started: "started",
    NodeStarted: "node_started",
    NodeProgress: "node_progress",
    NodesCached: "nodes_cached",
    OutputReady: "output_ready",
    Completed: "completed",
    Failed: "failed",
    Cancelled: "cancelled",
    Preview: "preview",  # never journaled: not in _READERS
}


def _child(f: Fields, name: str) -> Fields:
    child = f.child(name)
    assert child is not None  # required
    return child


def _seed_pair(f: Fields, i: int, pair: object) -> tuple[str, int]:
    if (
        isinstance(pair, list)
        and len(pair) == 2
        and isinstance(pair[0], str)
        and isinstance(pair[1], int)
        and not isinstance(pair[1], bool)
    ):
        return pair[0], pair[1]
    raise f.damaged(f"seeds[{i}]", f"must be [name, integer], not {excerpt(pair)}")


def kind_name(body: EventBody) -> str:
    """The event's kind as the journal, the SSE stream and the client's dicts name it (``node_progress``)."""
    return _TYPE_NAMES[type(body)]


@dataclass(frozen=True)
class RunEvent:
    """One event of a run: numbered from 1 without gaps, stamped when the service observed it."""

    run_id: str
    seq: int
    time: datetime
    body: EventBody

    @property
    def is_terminal(self) -> bool:
        return isinstance(self.body, TERMINAL)

    def to_json(self) -> str:
        """The event's journal line (without the newline); a preview has none."""
        if isinstance(self.body, Preview):
            raise TypeError("previews are not journaled")
        line = {"seq": self.seq, "time": self.time.isoformat(), "type": kind_name(self.body)}
        return compact_text({**line, "data": self.body})

    @classmethod
    def from_json(cls, run_id: str, line: str | bytes) -> RunEvent:
        """Read one journal line; anything malformed raises DamagedRecord naming the field."""
        f = Fields(loads(line.encode() if isinstance(line, str) else line, run_id, EVENTS_FILE), run_id, EVENTS_FILE)
        kind = f.text("type")
        reader = _READERS.get(kind)
        if reader is None:
            raise f.damaged("type", f"unknown event type {excerpt(kind)}")
        try:
            time = datetime.fromisoformat(f.text("time"))
        except ValueError:
            raise f.damaged("time", f"not an ISO-8601 time: {excerpt(f.data.get('time'))}") from None
        seq = f.integer("seq")
        data = f.child("data")
        assert data is not None
        try:
            body = reader(data)
        except DamagedRecord:
            raise
        except ValueError as exc:  # a MediaKind/FailureCode value the enum does not know
            raise f.damaged("data", str(exc)[:200]) from None
        return cls(run_id, seq, time, body)
