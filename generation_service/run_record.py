"""A run's ``metadata.json``: kept current through the run, rewritten atomically on each change, and
read back as a RunSummary for GetRun / ListRuns."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_generation.runstore import (
    MediaKind,
    RunStatus,
    RunStore,
    entity_filename,
    metadata_text,
    output_entities,
    utc_now,
    write_json_atomic,
    write_text_atomic,
)
from generation_service import events as ev
from generation_service.errors import NodeProblem


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


PROGRESS_WRITE_DELAY_S = 0.25


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
        self._lock = asyncio.Lock()  # one write at a time; each writes the latest state
        self._pending = False
        self._flusher: asyncio.Task[None] | None = None

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
        write_json_atomic(run_dir / archive, workflow, durable=False)  # metadata.json below is the record
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
        # Not fsynced: a killed process loses nothing; only a machine crash could lose runs in flight.
        write_json_atomic(store.metadata_path(run_id), metadata, durable=False)
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
        self,
        *,
        status: RunStatus | None = None,
        entity: dict[str, Any] | None = None,
        durable: bool = False,
        **fields: Any,
    ) -> None:
        """Apply the changes to the record and write metadata.json.

        A durable update (a new output, the final state) is written and fsynced before this returns.
        Progress (status and current_state while the run goes on) is written in the background without
        fsync, coalesced to the latest state: the event journal already has every step, and a run's
        progress must never wait for a disk. Readers see a whole file either way.
        """
        if status is not None:
            self.metadata["status"] = status.value
        if entity is not None:
            self.metadata["entities"].append(entity)
        self.metadata.update(fields)
        if self.on_change is not None:
            self.on_change(self.metadata)
        if durable:
            self._pending = False
            await self._write(durable=True)
            return
        self._pending = True
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"metadata-{self.run_id}")

    async def _flush(self) -> None:
        # A short delay coalesces the bursts of a run's start (queued, running, the first nodes) into
        # one write; a quick run reaches its durable final write first and writes no progress at all.
        await asyncio.sleep(PROGRESS_WRITE_DELAY_S)
        while self._pending:
            self._pending = False
            await self._write(durable=False)

    async def _write(self, durable: bool) -> None:
        async with self._lock:
            text = metadata_text(self.metadata)  # serialised here: later changes must not race the writer thread
            await asyncio.to_thread(write_text_atomic, self.store.metadata_path(self.run_id), text, durable)

    async def written(self) -> None:
        """Write the current state now (without fsync), e.g. before telling anyone about a new output."""
        self._pending = False
        await self._write(durable=False)


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
