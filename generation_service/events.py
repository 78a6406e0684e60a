"""Domain events of a run: what the runner reports and the servicer turns into protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from comfy_generation.runstore import MediaKind
from generation_service.errors import NodeProblem


class FailureCode(StrEnum):
    """Why a run failed (the proto's FailureCode)."""

    INVALID_WORKFLOW = "invalid_workflow"
    EXECUTION_ERROR = "execution_error"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    PROMPT_LOST = "prompt_lost"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    OUTPUT_FAILED = "output_failed"
    INTERNAL = "internal"


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


@dataclass(frozen=True)
class Started:
    queue_wait_s: float


@dataclass(frozen=True)
class NodeStarted:
    node_id: str
    class_type: str
    title: str


@dataclass(frozen=True)
class NodeProgress:
    node_id: str
    value: int
    max: int


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
)
TERMINAL = (Completed, Failed, Cancelled)


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
