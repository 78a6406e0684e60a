"""What ComfyUI answers, read into plain values: history entries, output files, validation errors.

Every reader here tolerates extra keys and odd shapes (newer ComfyUI builds add keys to file entries;
SwarmUI answers some errors with a string or HTML), and never trusts a shape it did not check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from comfy_generation.runstore.events import NodeProblem
from generation_service.errors import BackendUnavailable, WorkflowRejected


@dataclass(frozen=True)
class FileRef:
    """A file as ComfyUI names it in ``executed`` / history outputs."""

    filename: str
    subfolder: str
    type: str  # "output", "temp" or "input"


@dataclass(frozen=True)
class NodeOutput:
    node_id: str
    files: tuple[FileRef, ...]


@dataclass(frozen=True)
class HistoryEntry:
    """A finished prompt's ``/history`` entry."""

    status_str: str  # "success" or "error"
    completed: bool
    outputs: tuple[NodeOutput, ...]
    messages: tuple[tuple[str, dict[str, Any]], ...]

    @property
    def succeeded(self) -> bool:
        return self.status_str == "success" and self.completed

    def message(self, kind: str) -> dict[str, Any] | None:
        return next((data for name, data in self.messages if name == kind), None)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def rejection_error(text: str) -> Exception:
    """Translate a 400 from /prompt: ComfyUI's validation shape, or a SwarmUI error string."""
    body = loads(text)
    if not isinstance(body, dict):
        # SwarmUI answers HTML when it has no usable backend.
        return BackendUnavailable(f"backend answered 400: {text.strip()[:200]}")
    error = body.get("error")
    if isinstance(error, str):
        return BackendUnavailable(f"SwarmUI refused the prompt: {error}")
    error = _dict(error)
    problems = list(node_problems(body.get("node_errors")))
    if not problems:
        extra = _dict(error.get("extra_info"))
        problems.append(
            NodeProblem(
                node_id=str(extra.get("node_id", "")),
                class_type=str(extra.get("class_type", "")),
                type=str(error.get("type", "")),
                message=str(error.get("message", "")),
                details=str(error.get("details", "")),
                input_name="",
            )
        )
    return WorkflowRejected(str(error.get("message") or "the backend rejected the workflow"), tuple(problems))


def node_problems(node_errors: object) -> list[NodeProblem]:
    """Flatten ComfyUI's ``node_errors`` map into one problem per node and input."""
    if not isinstance(node_errors, dict):
        return []
    problems = []
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict):
            continue
        for err in entry.get("errors", []):
            if not isinstance(err, dict):
                continue
            extra = _dict(err.get("extra_info"))
            problems.append(
                NodeProblem(
                    node_id=str(node_id),
                    class_type=str(entry.get("class_type", "")),
                    type=str(err.get("type", "")),
                    message=str(err.get("message", "")),
                    details=str(err.get("details", "")),
                    input_name=str(extra.get("input_name", "")),
                )
            )
    return problems


def parse_history_entry(entry: dict[str, Any]) -> HistoryEntry:
    status = _dict(entry.get("status"))
    outputs = []
    raw_outputs = _dict(entry.get("outputs"))
    for node_id, ui in raw_outputs.items():
        files = [
            FileRef(str(item["filename"]), str(item.get("subfolder", "")), str(item.get("type", "output")))
            for value in (ui.values() if isinstance(ui, dict) else [])
            if isinstance(value, list)
            for item in value
            if isinstance(item, dict) and isinstance(item.get("filename"), str)
        ]
        outputs.append(NodeOutput(str(node_id), tuple(dict.fromkeys(files))))
    messages = tuple(
        (str(m[0]), m[1])
        for m in status.get("messages", [])
        if isinstance(m, list) and len(m) == 2 and isinstance(m[1], dict)
    )
    return HistoryEntry(
        status_str=str(status.get("status_str", "")),
        completed=bool(status.get("completed", False)),
        outputs=tuple(outputs),
        messages=messages,
    )
