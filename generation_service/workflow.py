"""ComfyUI API-format workflows: parsing, checks before submission, and per-run output prefixes."""

from __future__ import annotations

import copy
import json
import re
import sys
from dataclasses import dataclass
from typing import Any

from generation_service.errors import MAX_PROBLEMS, InvalidWorkflow, excerpt

PREFIX_ROOT = "gensvc"
# Containers inside containers, the workflow object itself being level 1. API-format workflows use 4
# or 5 (node, inputs, a list value); Python's json, ComfyUI's too, gives up near 1000 with a RecursionError.
MAX_JSON_DEPTH = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class NodeInfo:
    class_type: str
    title: str


def parse(workflow_json: str) -> dict[str, Any]:
    """Parse and check an API-format workflow; every problem found is named in one InvalidWorkflow."""
    if not workflow_json.strip():
        raise InvalidWorkflow("workflow_json is empty: send a ComfyUI API-format workflow (Save (API))")
    graph = _loads(workflow_json)
    if isinstance(graph, dict) and "prompt" in graph and isinstance(graph["prompt"], dict):
        graph = graph["prompt"]  # a whole /prompt body was sent: take its graph
    if not isinstance(graph, dict) or not graph:
        raise InvalidWorkflow("workflow_json must be a non-empty JSON object mapping node ids to nodes")
    if "nodes" in graph and "links" in graph:
        raise InvalidWorkflow("workflow_json is a UI-format workflow; export it from ComfyUI with 'Save (API)' instead")
    problems = [p for node_id, node in graph.items() for p in _node_problems(excerpt(node_id), node)]
    if problems:
        listed = "; ".join(problems[:MAX_PROBLEMS])
        if len(problems) > MAX_PROBLEMS:
            listed += f"; and {len(problems) - MAX_PROBLEMS} more"
        raise InvalidWorkflow("workflow_json is not an API-format workflow: " + listed)
    return graph


def _loads(workflow_json: str) -> Any:
    too_deep = f"workflow_json nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
    try:
        graph = json.loads(workflow_json)
    except RecursionError:
        raise InvalidWorkflow(too_deep) from None
    except json.JSONDecodeError as exc:
        raise InvalidWorkflow(f"workflow_json is not valid JSON: {exc}") from exc
    except ValueError:  # the only other one: int() refuses an integer that long
        digits = sys.get_int_max_str_digits()
        raise InvalidWorkflow(f"workflow_json has an integer of more than {digits} digits") from None
    if _deeper_than(graph, MAX_JSON_DEPTH):
        raise InvalidWorkflow(too_deep)
    return graph


def _deeper_than(value: object, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels in ``value`` (without recursion)."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _node_problems(node_id: str, node: object) -> list[str]:
    if not isinstance(node, dict):
        return [f"node {node_id}: must be an object with class_type and inputs"]
    problems = []
    if not isinstance(node.get("class_type"), str) or not node["class_type"]:
        problems.append(f"node {node_id}: class_type must be a non-empty string")
    if not isinstance(node.get("inputs", {}), dict):
        problems.append(f"node {node_id}: inputs must be an object")
    return problems


def with_run_prefixes(graph: dict[str, Any], run_id: str) -> dict[str, Any]:
    """A copy of the graph in which every literal ``filename_prefix`` is unique to this run.

    ComfyUI replays an identical prompt from its cache without writing new files, and several runs
    saving under one prefix share a counter: a per-run prefix rules out both. The original prefix's
    last part is kept so names stay readable: ``audio/ComfyUI`` becomes ``gensvc/<run_id>/4_ComfyUI``.
    """
    rewritten = copy.deepcopy(graph)
    for node_id, node in rewritten.items():
        inputs = node.get("inputs")
        if isinstance(inputs, dict) and isinstance(inputs.get("filename_prefix"), str):
            base = _UNSAFE.sub("_", inputs["filename_prefix"].rsplit("/", 1)[-1]).strip("_") or "output"
            inputs["filename_prefix"] = f"{PREFIX_ROOT}/{run_id}/{_UNSAFE.sub('_', node_id)}_{base}"
    return rewritten


def node_infos(graph: dict[str, Any]) -> dict[str, NodeInfo]:
    """Class and title of every node, for progress events."""
    infos = {}
    for node_id, node in graph.items():
        meta = node.get("_meta")
        title = meta.get("title", "") if isinstance(meta, dict) else ""
        infos[node_id] = NodeInfo(class_type=str(node.get("class_type", "")), title=str(title))
    return infos
