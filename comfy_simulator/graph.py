"""Output cache and execution order of ComfyUI 0.3.64 (``comfy_execution.caching`` / ``graph``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .nodes import NODE_CLASSES
from .paths import Folders


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


class OutputCache:
    """Classic cache: keyed by the node's input signature (class, IS_CHANGED, inputs, recursively through
    links). Entries not used by the current prompt are dropped when a prompt starts."""

    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}
        self._keys: dict[str, str | None] = {}

    def set_prompt(self, prompt: dict[str, Any], folders: Folders) -> None:
        memo: dict[str, str | None] = {}
        self._keys = {node_id: self._signature(node_id, prompt, folders, memo, set()) for node_id in prompt}
        used = {key for key in self._keys.values() if key is not None}
        self._entries = {k: v for k, v in self._entries.items() if k in used}

    def _signature(
        self, node_id: str, prompt: dict[str, Any], folders: Folders, memo: dict[str, str | None], seen: set[str]
    ) -> str | None:
        if node_id in memo:
            return memo[node_id]
        if node_id not in prompt or node_id in seen:
            return None
        node = prompt[node_id]
        node_def = NODE_CLASSES.get(node.get("class_type", ""))
        if node_def is None:
            return None
        try:
            fingerprint = node_def.fingerprint(folders, node["inputs"])
        except Exception:
            memo[node_id] = None  # IS_CHANGED failed: never served from the cache
            return None
        parts: list[Any] = [node["class_type"], repr(fingerprint)]
        for name in sorted(node["inputs"]):
            value = node["inputs"][name]
            if is_link(value):
                upstream = self._signature(value[0], prompt, folders, memo, seen | {node_id})
                if upstream is None:
                    memo[node_id] = None
                    return None
                parts.append([name, "link", upstream, value[1]])
            else:
                parts.append([name, json.dumps(value, sort_keys=True, default=str)])
        memo[node_id] = json.dumps(parts)
        return memo[node_id]

    def get(self, node_id: str) -> CacheEntry | None:
        key = self._keys.get(node_id)
        return None if key is None else self._entries.get(key)

    def set(self, node_id: str, entry: CacheEntry) -> None:
        key = self._keys.get(node_id)
        if key is not None:
            self._entries[key] = entry

    def all_node_ids(self) -> list[str]:
        return list(self._keys)

    def clear(self) -> None:
        self._entries.clear()


class ExecutionList:
    """``ExecutionList``: a topological sort that prefers output nodes (and their direct feeders) first."""

    def __init__(self, prompt: dict[str, Any], is_cached: Callable[[str], bool]) -> None:
        self.prompt = prompt
        self.is_cached = is_cached
        self.pending: dict[str, None] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, None]] = {}

    def add_node(self, node_id: str) -> None:
        stack, links = [node_id], []
        while stack:
            uid = stack.pop()
            if uid in self.pending:
                continue
            self.pending[uid] = None
            self.block_count[uid] = 0
            self.blocking[uid] = {}
            for value in self.prompt[uid]["inputs"].values():
                if is_link(value):
                    if not self.is_cached(value[0]):
                        stack.append(value[0])
                    links.append((value[0], uid))
        for from_id, to_id in links:
            if not self.is_cached(from_id):
                self.add_node(from_id)
                if to_id not in self.blocking[from_id]:
                    self.blocking[from_id][to_id] = None
                    self.block_count[to_id] += 1

    def is_empty(self) -> bool:
        return not self.pending

    def _is_output(self, node_id: str) -> bool:
        return NODE_CLASSES[self.prompt[node_id]["class_type"]].output_node

    def stage(self) -> str | None:
        """The next node to run, or None on a dependency cycle."""
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        for n in ready:
            if self._is_output(n):
                return n
        for n in ready:
            if any(self._is_output(b) for b in self.blocking[n]):
                return n
        for n in ready:
            if any(self._is_output(b2) for b in self.blocking[n] for b2 in self.blocking.get(b, {})):
                return n
        return ready[0]

    def complete(self, node_id: str) -> None:
        self.pending.pop(node_id, None)
        for blocked in self.blocking.pop(node_id, {}):
            self.block_count[blocked] -= 1
        self.block_count.pop(node_id, None)
