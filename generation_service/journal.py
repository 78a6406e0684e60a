"""A run's event log on disk: ``<run>/events.jsonl``, one JSON object per event, append-only.

Each event is written (and flushed to the OS) before anyone sees it, so a watcher that replays the
log after a service restart gets exactly the events that were streamed, with the same seq numbers.
A torn last line (the process died mid-write) is ignored on reading.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from comfy_generation.runstore import MediaKind
from generation_service import events as ev
from generation_service.errors import NodeProblem

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"

_BODY_TYPES: dict[str, type[ev.EventBody]] = {
    "accepted": ev.Accepted,
    "queued": ev.Queued,
    "started": ev.Started,
    "node_started": ev.NodeStarted,
    "node_progress": ev.NodeProgress,
    "nodes_cached": ev.NodesCached,
    "output_ready": ev.OutputReady,
    "completed": ev.Completed,
    "failed": ev.Failed,
    "cancelled": ev.Cancelled,
}
_TYPE_NAMES = {cls: name for name, cls in _BODY_TYPES.items()}


def encode(event: ev.RunEvent) -> str:
    body = dataclasses.asdict(event.body)
    return json.dumps(
        {"seq": event.seq, "time": event.time.isoformat(), "type": _TYPE_NAMES[type(event.body)], "data": body},
        separators=(",", ":"),
    )


def decode(run_id: str, line: str) -> ev.RunEvent:
    raw = json.loads(line)
    return ev.RunEvent(
        run_id, int(raw["seq"]), datetime.fromisoformat(raw["time"]), _decode_body(raw["type"], raw["data"])
    )


def _output(data: dict[str, Any]) -> ev.StoredOutput:
    return ev.StoredOutput(**{**data, "kind": MediaKind(data["kind"])})


def _decode_body(kind: str, data: dict[str, Any]) -> ev.EventBody:
    cls = _BODY_TYPES[kind]
    if cls is ev.OutputReady:
        return ev.OutputReady(_output(data["output"]))
    if cls is ev.Completed:
        return ev.Completed(tuple(_output(o) for o in data["outputs"]), data["queue_wait_s"], data["execution_s"])
    if cls is ev.Failed:
        problems = tuple(NodeProblem(**p) for p in data.get("node_errors", ()))
        return ev.Failed(**{**data, "code": ev.FailureCode(data["code"]), "node_errors": problems})
    if cls is ev.Accepted:
        return ev.Accepted(**{**data, "seeds": tuple((str(k), int(v)) for k, v in data.get("seeds", ()))})
    if cls is ev.NodesCached:
        return ev.NodesCached(tuple(data["node_ids"]))
    return cls(**data)


def read(run_dir: Path, run_id: str) -> list[ev.RunEvent]:
    """Every complete event in the run's log, in order; [] when there is none."""
    try:
        lines = (run_dir / EVENTS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for number, line in enumerate(lines, 1):
        try:
            events.append(decode(run_id, line))
        except (ValueError, KeyError, TypeError):
            if number != len(lines):
                raise
            logger.warning("run %s: ignoring a torn last line in its event log", run_id)
    return events


def _drop_torn_tail(path: Path) -> None:
    """Cut a partly written last line, so that appending after a crash keeps every line whole."""
    try:
        with path.open("rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


class Journal:
    """The append side of a run's event log."""

    def __init__(self, run_dir: Path) -> None:
        path = run_dir / EVENTS_FILE
        _drop_torn_tail(path)
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def append(self, event: ev.RunEvent) -> None:
        # Flushed, not fsynced: a killed process loses nothing; a crashed machine may lose the tail,
        # which the run's metadata and the backend's history let recovery rebuild.
        self._file.write(encode(event) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
