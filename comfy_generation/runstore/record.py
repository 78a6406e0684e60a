"""A run's record, ``<run>/metadata.json``: the typed schema, its JSON form, and its strict reader.

The field names and shapes are the storage contract the original system established (``run_id``,
``timestamp``, ``status``, ``entities`` of ``{sequence, type, filename, timestamp, metadata}``, ...); the
README documents each field. ``RunRecord.from_json`` accepts only what ``to_json`` can write and raises
``DamagedRecord`` (naming the run, the file and the field) for anything else.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from comfy_generation.runstore.events import Estimate, Failed
from comfy_generation.runstore.formats import MediaKind
from comfy_generation.runstore.schema import Fields, JsonValue, excerpt, loads

METADATA_FILE = "metadata.json"
WORKFLOW_ENTITY = "workflow"
# The service writes records of a few KB (a thousand outputs stay far below this); a bigger file is not
# one of ours and is refused before it is read.
MAX_RECORD_BYTES = 4 * 1024 * 1024
# What ``entity_filename`` makes: ``NN_<type>.<ext>``. Anything else (a path, NUL, CR/LF, non-ASCII) is damage.
_ENTITY_FILENAME = re.compile(r"[0-9]{2,9}_[a-z0-9_]{1,40}\.[a-z0-9]{1,10}")


class RunStatus(StrEnum):
    """A run's lifecycle state."""

    ACCEPTED = "accepted"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


def entity_filename(sequence: int, entity_type: str, ext: str) -> str:
    return f"{sequence:02d}_{entity_type}.{ext.lstrip('.')}"


@dataclass(frozen=True)
class RunOptions:
    """How a run is followed; recorded so a restarted service follows it the same way."""

    include_previews: bool = False
    queue_timeout_s: float = 3600.0
    execution_timeout_s: float = 3600.0
    # Resubmit once to another backend when the backend dies mid-execution (repeats the GPU work).
    retry_on_backend_loss: bool = False
    backend_labels: tuple[str, ...] = ()  # a backend must carry every one of these
    live_previews: bool = False  # stream the samplers' previews (never journaled)
    keep_preview: bool = False  # keep the latest preview file once the run ended

    @classmethod
    def from_fields(cls, f: Fields) -> RunOptions:
        defaults = cls()
        return cls(
            retry_on_backend_loss=f.flag("retry_on_backend_loss", False),
            live_previews=f.flag("live_previews", False),
            keep_preview=f.flag("keep_preview", False),
            backend_labels=f.strings("backend_labels"),
            include_previews=f.flag("include_previews", defaults.include_previews),
            queue_timeout_s=f.number("queue_timeout_s", defaults.queue_timeout_s) or defaults.queue_timeout_s,
            execution_timeout_s=f.number("execution_timeout_s", defaults.execution_timeout_s)
            or defaults.execution_timeout_s,
        )


@dataclass(frozen=True)
class CurrentState:
    """Where the run is now: ``step`` is submitting, queued, running, downloading, rejected or the final status."""

    step: str
    position: int | None = None  # while queued: prompts ahead of it
    node_id: str = ""  # while running: the node executing
    class_type: str = ""
    overall: float | None = None  # while running: the fraction done
    estimate: Estimate | None = None  # the latest estimate (none without a basis)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"step": self.step}
        if self.position is not None:
            data["position"] = self.position
        if self.node_id:
            data.update(node_id=self.node_id, class_type=self.class_type)
        if self.overall is not None:
            data["overall"] = round(self.overall, 4)
        if self.estimate is not None:
            data["estimate"] = dataclasses.asdict(self.estimate)
        return data

    @classmethod
    def from_fields(cls, f: Fields) -> CurrentState:
        position = f.integer("position", -1)
        estimate = f.child("estimate", None)
        return cls(
            f.text("step"),
            None if position < 0 else position,
            f.text("node_id", ""),
            f.text("class_type", ""),
            f.number("overall", None),
            Estimate.from_fields(estimate) if estimate is not None else None,
        )


@dataclass(frozen=True)
class Timings:
    queue_wait_s: float  # from acceptance to the start of execution
    execution_s: float  # execution on the backend (the backend's own clock when it reports one)

    @classmethod
    def from_fields(cls, f: Fields) -> Timings:
        return cls(f.number("queue_wait_s") or 0.0, f.number("execution_s") or 0.0)


@dataclass(frozen=True)
class WorkflowMeta:
    """The ``metadata`` of the archived workflow (entity 1)."""

    format: str
    mime: str
    nodes: int


@dataclass(frozen=True)
class OutputMeta:
    """The ``metadata`` of an output: what it is, and where the backend had it."""

    format: str  # canonical extension, decided from the content
    mime: str
    size_bytes: int
    sha256: str  # hex, of the stored bytes
    node_id: str  # the workflow node that produced it
    filename: str  # the backend's name for it
    subfolder: str
    type: str  # the backend's folder type: output or temp

    @property
    def backend_ref(self) -> tuple[str, str, str, str]:
        """(node id, backend file name, subfolder, type): what identifies the backend file it came from."""
        return (self.node_id, self.filename, self.subfolder, self.type)


@dataclass(frozen=True)
class Entity:
    """One file of the run: the archived workflow, or an output (``type`` ``output_<kind>``)."""

    sequence: int
    type: str
    filename: str  # NN_<type>.<ext>, a plain name inside the run folder
    timestamp: str
    metadata: WorkflowMeta | OutputMeta

    @property
    def kind(self) -> MediaKind | None:
        """The media kind of an output; None for the workflow archive."""
        return next((k for k in MediaKind if k.entity_type == self.type), None)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_fields(cls, f: Fields) -> Entity:
        sequence, kind, filename = f.integer("sequence"), f.text("type"), f.text("filename")
        if sequence < 1:
            raise f.damaged("sequence", f"must be 1 or more, not {sequence}")
        if not _ENTITY_FILENAME.fullmatch(filename):
            raise f.damaged("filename", f"must be a NN_<type>.<ext> name in the run folder, not {excerpt(filename)}")
        meta = f.child("metadata")
        assert meta is not None
        if kind == WORKFLOW_ENTITY:
            metadata: WorkflowMeta | OutputMeta = WorkflowMeta(
                meta.text("format"), meta.text("mime"), meta.integer("nodes", 0)
            )
        elif kind in {k.entity_type for k in MediaKind}:
            metadata = OutputMeta(
                format=meta.text("format"),
                mime=meta.text("mime"),
                size_bytes=meta.integer("size_bytes"),
                sha256=meta.text("sha256"),
                node_id=meta.text("node_id"),
                filename=meta.text("filename"),
                subfolder=meta.text("subfolder", ""),
                type=meta.text("type", "output"),
            )
            if metadata.size_bytes < 0:
                raise meta.damaged("size_bytes", "must not be negative")
        else:
            raise f.damaged("type", f"unknown entity type {excerpt(kind)}")
        return cls(sequence, kind, filename, f.text("timestamp"), metadata)


@dataclass(frozen=True)
class RunRecord:
    """Everything run storage knows about a run (``metadata.json``). Immutable: writers replace it."""

    run_id: str
    timestamp: str  # when the run was accepted (ISO-8601, UTC)
    status: RunStatus
    prompt_id: str
    backend: str
    workflow: str  # the caller's workflow name
    options: RunOptions
    current_state: CurrentState
    entities: tuple[Entity, ...]
    template: str = ""
    params: dict[str, JsonValue] = field(default_factory=dict)  # a template's effective values
    seeds: dict[str, int] = field(default_factory=dict)
    request_id: str = ""
    request_fingerprint: str = ""
    # Outputs downloaded but not yet published (hidden files; never listed or served): a run publishes
    # all of its outputs at once, or none.
    staged: tuple[Entity, ...] = ()
    uploaded_inputs: bool = False  # input media were uploaded to its backend: the run cannot move
    retried: bool = False  # resubmitted once after its backend was lost mid-execution
    finished_at: str | None = None
    last_seq: int = 0  # the seq of the run's terminal event, once it has one
    timings: Timings | None = None
    error: Failed | None = None
    cancel_reason: str = ""

    def outputs(self, kind: MediaKind | None = None) -> list[Entity]:
        """Published outputs (of one kind, or all), in sequence order: the gateway's indexes count these."""
        found = [e for e in self.entities if e.kind is not None and (kind is None or e.kind == kind)]
        return sorted(found, key=lambda e: e.sequence)

    @property
    def next_sequence(self) -> int:
        return 1 + max((e.sequence for e in (*self.entities, *self.staged)), default=0)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "timestamp": self.timestamp,
            "status": self.status.value,
            "prompt_id": self.prompt_id,
            "backend": self.backend,
            "workflow": self.workflow,
            "template": self.template or None,
            "params": self.params,
            "seeds": self.seeds,
            "request_id": self.request_id,
            "request_fingerprint": self.request_fingerprint,
            "options": {**dataclasses.asdict(self.options), "backend_labels": list(self.options.backend_labels)},
            "current_state": self.current_state.to_json(),
            "entities": [e.to_json() for e in self.entities],
        }
        if self.staged:
            data["staged"] = [e.to_json() for e in self.staged]
        if self.uploaded_inputs:
            data["uploaded_inputs"] = True
        if self.retried:
            data["retried"] = True
        if self.finished_at is not None:
            data.update(finished_at=self.finished_at, last_seq=self.last_seq)
        if self.timings is not None:
            data["timings"] = dataclasses.asdict(self.timings)
        if self.error is not None:
            data["error"] = self.error.to_json()
        if self.cancel_reason:
            data["cancel_reason"] = self.cancel_reason
        return data

    @classmethod
    def from_json(cls, raw: bytes, run_id: str) -> RunRecord:
        """Parse a ``metadata.json`` read from the folder of ``run_id``."""
        if len(raw) > MAX_RECORD_BYTES:
            raise Fields({}, run_id, METADATA_FILE).damaged("", f"is larger than {MAX_RECORD_BYTES} bytes")
        f = Fields(loads(raw, run_id, METADATA_FILE), run_id, METADATA_FILE)
        if f.text("run_id") != run_id:
            raise f.damaged("run_id", f"names another run ({excerpt(f.data['run_id'])})")
        options, state = f.child("options", {}), f.child("current_state")
        timings, error = f.child("timings", None), f.child("error", None)
        assert options is not None and state is not None
        entities = f.items("entities", Entity.from_fields)
        staged = f.items("staged", Entity.from_fields)
        numbers = [e.sequence for e in (*entities, *staged)]
        if len(set(numbers)) != len(numbers):
            raise f.damaged("entities", "two entities have the same sequence number")
        return cls(
            run_id=run_id,
            timestamp=f.text("timestamp"),
            status=f.choice("status", RunStatus),
            prompt_id=f.text("prompt_id", ""),
            backend=f.text("backend", ""),
            workflow=f.text("workflow", ""),
            options=RunOptions.from_fields(options),
            current_state=CurrentState.from_fields(state),
            entities=entities,
            template=f.text("template", ""),
            params=f.json_map("params"),
            seeds=f.int_map("seeds"),
            request_id=f.text("request_id", ""),
            request_fingerprint=f.text("request_fingerprint", ""),
            staged=staged,
            uploaded_inputs=f.flag("uploaded_inputs", False),
            retried=f.flag("retried", False),
            finished_at=f.text("finished_at", "") or None,
            last_seq=f.integer("last_seq", 0),
            timings=None if timings is None else Timings.from_fields(timings),
            error=None if error is None else Failed.from_fields(error),
            cancel_reason=f.text("cancel_reason", ""),
        )
