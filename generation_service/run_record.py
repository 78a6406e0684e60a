"""A run's ``metadata.json``: kept current through the run, rewritten atomically on each change, and
read back as a RunSummary for GetRun / ListRuns."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generation_service import events as ev
from generation_service.errors import NodeProblem
from runstore import (
    MediaKind,
    RunStatus,
    RunStore,
    entity_filename,
    output_entities,
    utc_now,
    write_json_atomic,
)


@dataclass(frozen=True)
class RunOptions:
    """How a run is followed; recorded so a restarted service follows it the same way."""

    include_previews: bool = False
    queue_timeout_s: float = 3600.0
    execution_timeout_s: float = 3600.0


@dataclass(frozen=True)
class RunSummary:
    """What GetRun and ListRuns report, read from metadata.json."""

    run_id: str
    status: RunStatus
    prompt_id: str
    workflow_name: str
    backend: str
    created: str
    finished: str | None
    outputs: tuple[ev.StoredOutput, ...]
    queue_wait_s: float | None
    execution_s: float | None
    failure: ev.Failed | None
    cancel_reason: str
    last_seq: int
    request_id: str
    template: str
    params: dict[str, Any]


class RunRecord:
    """The writer's view of one run folder. Only the runner that owns the run writes it."""

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        metadata: dict[str, Any],
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.metadata = metadata
        self.on_change = on_change
        self._lock = asyncio.Lock()  # keeps writes in order: the last state written is the latest

    @classmethod
    def create(
        cls,
        store: RunStore,
        run_id: str,
        *,
        prompt_id: str,
        backend: str,
        workflow_name: str,
        workflow: dict[str, Any],
        options: RunOptions,
        request_id: str,
        fingerprint: str,
        template: str = "",
        params: dict[str, Any] | None = None,
        seeds: dict[str, int] | None = None,
    ) -> RunRecord:
        """Create the run folder with its archived workflow (entity 1) and first metadata.json."""
        run_dir = store.create_run(run_id)
        archive = entity_filename(1, "workflow", "json")
        write_json_atomic(run_dir / archive, workflow)
        now = utc_now()
        metadata: dict[str, Any] = {
            "run_id": run_id,
            "timestamp": now,
            "status": RunStatus.ACCEPTED.value,
            "prompt_id": prompt_id,
            "backend": backend,
            "workflow": workflow_name,
            "template": template or None,
            "params": params or {},
            "seeds": seeds or {},
            "request_id": request_id,
            "request_fingerprint": fingerprint,
            "options": dataclasses.asdict(options),
            "current_state": {"step": "submitting"},
            "entities": [
                {
                    "sequence": 1,
                    "type": "workflow",
                    "filename": archive,
                    "timestamp": now,
                    "metadata": {"format": "json", "mime": "application/json", "nodes": len(workflow)},
                },
            ],
        }
        write_json_atomic(store.metadata_path(run_id), metadata)
        return cls(store, run_id, metadata)

    @property
    def prompt_id(self) -> str:
        return str(self.metadata["prompt_id"])

    @property
    def status(self) -> RunStatus:
        return RunStatus(self.metadata["status"])

    @property
    def options(self) -> RunOptions:
        return RunOptions(**self.metadata.get("options", {}))

    @property
    def run_dir(self) -> Path:
        return self.store.run_dir(self.run_id)

    @property
    def next_sequence(self) -> int:
        return 1 + max((int(e["sequence"]) for e in self.metadata["entities"]), default=0)

    def stored_outputs(self) -> set[tuple[str, str, str, str]]:
        """(node id, backend file name, subfolder, type) of every output already stored."""
        return {
            (str(m.get("node_id")), str(m.get("filename")), str(m.get("subfolder")), str(m.get("type")))
            for e in self.metadata["entities"]
            if str(e.get("type", "")).startswith("output_")
            for m in [e.get("metadata", {})]
        }

    async def update(
        self, *, status: RunStatus | None = None, entity: dict[str, Any] | None = None, **fields: Any
    ) -> None:
        """Apply the changes and write metadata.json (off the event loop: it fsyncs)."""
        if status is not None:
            self.metadata["status"] = status.value
        if entity is not None:
            self.metadata["entities"].append(entity)
        self.metadata.update(fields)
        snapshot = json.loads(json.dumps(self.metadata))  # later changes must not race the writer thread
        async with self._lock:
            await asyncio.to_thread(write_json_atomic, self.store.metadata_path(self.run_id), snapshot)
        if self.on_change is not None:
            self.on_change(snapshot)


def failure_to_json(failure: ev.Failed) -> dict[str, Any]:
    data = dataclasses.asdict(failure)
    data["code"] = failure.code.value
    return data


def failure_from_json(data: dict[str, Any]) -> ev.Failed:
    problems = tuple(NodeProblem(**p) for p in data.get("node_errors", ()))
    return ev.Failed(**{**data, "code": ev.FailureCode(data.get("code", "internal")), "node_errors": problems})


def summarize(metadata: dict[str, Any], url_for: Callable[[MediaKind, str, int], str], last_seq: int) -> RunSummary:
    """A RunSummary of a run's metadata; ``url_for(kind, run_id, index)`` builds output URLs."""
    run_id = str(metadata["run_id"])
    outputs = []
    for kind in MediaKind:
        for index, entity in enumerate(output_entities(metadata, kind)):
            meta = entity.get("metadata", {})
            outputs.append(
                (
                    int(entity["sequence"]),
                    ev.StoredOutput(
                        kind=kind,
                        index=index,
                        url=url_for(kind, run_id, index),
                        mime=str(meta.get("mime", "")),
                        size_bytes=int(meta.get("size_bytes", 0)),
                        sha256=str(meta.get("sha256", "")),
                        node_id=str(meta.get("node_id", "")),
                        filename=str(entity["filename"]),
                    ),
                )
            )
    timings = metadata.get("timings") or {}
    status = RunStatus(metadata["status"])
    error = metadata.get("error")
    return RunSummary(
        run_id=run_id,
        status=status,
        prompt_id=str(metadata.get("prompt_id", "")),
        workflow_name=str(metadata.get("workflow") or ""),
        backend=str(metadata.get("backend", "")),
        created=str(metadata["timestamp"]),
        finished=metadata.get("finished_at"),
        outputs=tuple(o for _, o in sorted(outputs, key=lambda pair: pair[0])),
        queue_wait_s=timings.get("queue_wait_s"),
        execution_s=timings.get("execution_s"),
        failure=failure_from_json(error) if status == RunStatus.FAILED and isinstance(error, dict) else None,
        cancel_reason=str(metadata.get("cancel_reason", "")),
        last_seq=last_seq,
        request_id=str(metadata.get("request_id") or ""),
        template=str(metadata.get("template") or ""),
        params=dict(metadata.get("params") or {}),
    )
