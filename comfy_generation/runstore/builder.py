"""A finished run folder made from files at hand, exactly as the service writes one: for benchmarks, tests
and importing media made elsewhere."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from comfy_generation.runstore.files import atomic_file, write_text_atomic
from comfy_generation.runstore.formats import SNIFF_BYTES, detect_format
from comfy_generation.runstore.ids import new_run_id, utc_now
from comfy_generation.runstore.layout import WORKFLOW_FILE, RunStore, record_text
from comfy_generation.runstore.record import (
    CurrentState,
    Entity,
    OutputMeta,
    RunOptions,
    RunRecord,
    RunStatus,
    WorkflowMeta,
    entity_filename,
)


def write_finished_run(
    root: Path, outputs: Sequence[tuple[bytes, str]], status: RunStatus = RunStatus.COMPLETED
) -> str:
    """Create a run whose outputs are ``outputs`` ((content, backend file name), in order); returns its id."""
    store = RunStore(root)
    run_id = new_run_id()
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True)
    now = utc_now()
    write_text_atomic(run_dir / WORKFLOW_FILE, "{}")
    entities = [Entity(1, "workflow", WORKFLOW_FILE, now, WorkflowMeta("json", "application/json", 0))]
    for sequence, (content, backend_name) in enumerate(outputs, start=2):
        fmt = detect_format(content[:SNIFF_BYTES], backend_name)
        filename = entity_filename(sequence, fmt.kind.entity_type, fmt.ext)
        with atomic_file(run_dir / filename) as fh:
            fh.write(content)
        meta = OutputMeta(
            format=fmt.ext,
            mime=fmt.mime,
            size_bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            node_id=str(sequence + 7),
            filename=backend_name,
            subfolder="",
            type="output",
        )
        entities.append(Entity(sequence, fmt.kind.entity_type, filename, now, meta))
    record = RunRecord(
        run_id=run_id,
        timestamp=now,
        status=status,
        prompt_id="",
        backend="",
        workflow="",
        options=RunOptions(),
        current_state=CurrentState(status.value),
        entities=tuple(entities),
        finished_at=now if status.is_terminal else None,
    )
    write_text_atomic(store.metadata_path(run_id), record_text(record))
    return run_id
