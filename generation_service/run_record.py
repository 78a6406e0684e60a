"""A run's ``metadata.json``, kept current through the run and rewritten atomically on each change."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from runstore import RunStatus, RunStore, entity_filename, utc_now, write_json_atomic


class RunRecord:
    """The writer's view of one run folder. Only the runner that owns the run writes it."""

    def __init__(self, store: RunStore, run_id: str, metadata: dict[str, Any]) -> None:
        self.store = store
        self.run_id = run_id
        self.metadata = metadata
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
            "template": None,
            "params": {},
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
    def run_dir(self) -> Path:
        return self.store.run_dir(self.run_id)

    @property
    def next_sequence(self) -> int:
        return 1 + max((int(e["sequence"]) for e in self.metadata["entities"]), default=0)

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
