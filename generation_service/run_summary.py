"""What GetRun and ListRuns report about a run, made from its typed record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from comfy_generation.runstore import MediaKind, OutputMeta, RunRecord, RunStatus
from comfy_generation.runstore import events as ev
from comfy_generation.runstore.schema import JsonValue

UrlFor = Callable[[MediaKind, str, int, str], str]  # (kind, run_id, index, stored file name) -> the output's URL


@dataclass(frozen=True)
class RunSummary:
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
    params: dict[str, JsonValue]
    estimate: ev.Estimate | None = None


def stored_outputs(record: RunRecord, url_for: UrlFor) -> tuple[ev.StoredOutput, ...]:
    """The run's published outputs, in sequence order, each with its index among outputs of its kind."""
    counts: dict[MediaKind, int] = {}
    outputs = []
    for entity in record.outputs():
        kind, meta = entity.kind, entity.metadata
        assert kind is not None and isinstance(meta, OutputMeta)
        index = counts.get(kind, 0)
        counts[kind] = index + 1
        outputs.append(
            ev.StoredOutput(
                kind=kind,
                index=index,
                url=url_for(kind, record.run_id, index, entity.filename),
                mime=meta.mime,
                size_bytes=meta.size_bytes,
                sha256=meta.sha256,
                node_id=meta.node_id,
                filename=entity.filename,
            )
        )
    return tuple(outputs)


def summarize(record: RunRecord, url_for: UrlFor, last_seq: int) -> RunSummary:
    return RunSummary(
        run_id=record.run_id,
        status=record.status,
        prompt_id=record.prompt_id,
        workflow_name=record.workflow,
        backend=record.backend,
        created=record.timestamp,
        finished=record.finished_at,
        outputs=stored_outputs(record, url_for),
        queue_wait_s=record.timings.queue_wait_s if record.timings else None,
        execution_s=record.timings.execution_s if record.timings else None,
        failure=record.error if record.status == RunStatus.FAILED else None,
        cancel_reason=record.cancel_reason,
        last_seq=last_seq,
        request_id=record.request_id,
        template=record.template,
        params=record.params,
        estimate=record.current_state.estimate if not record.status.is_terminal else None,
    )
