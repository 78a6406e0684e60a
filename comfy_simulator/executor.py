"""Runs one prompt like ``execution.PromptExecutor.execute_async`` and emits the same websocket events."""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .graph import CacheEntry, ExecutionList, OutputCache, is_link
from .messaging import Messenger, Preview
from .nodes import NODE_CLASSES, InterruptProcessingError, NodeContext
from .paths import Folders
from .settings import SimulatorSettings
from .validation import full_type_name


def now_ms() -> int:
    return int(time.time() * 1000)


def format_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


class ProgressRegistry:
    """Per-prompt node states; ``progress_state`` lists every node that left ``pending`` (in that order)."""

    def __init__(self, prompt_id: str, messenger: Messenger, client_id: str | None) -> None:
        self.prompt_id = prompt_id
        self.messenger = messenger
        self.client_id = client_id
        self.nodes: dict[str, dict[str, Any]] = {}

    def _update(self, node_id: str, state: str, value: Any, maximum: Any) -> None:
        entry = self.nodes.setdefault(node_id, {"value": 0, "max": 1})
        entry.update(value=value, max=maximum, state=state)
        nodes = {
            nid: {
                "value": e["value"],
                "max": e["max"],
                "state": e["state"],
                "node_id": nid,
                "prompt_id": self.prompt_id,
                "display_node_id": nid,
                "parent_node_id": None,
                "real_node_id": nid,
            }
            for nid, e in self.nodes.items()
        }
        self.messenger.send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}, self.client_id)

    def start(self, node_id: str) -> None:
        self._update(node_id, "running", 0.0, 1.0)

    def update(self, node_id: str, value: int, maximum: int) -> None:
        self._update(node_id, "running", value, maximum)

    def finish(self, node_id: str) -> None:
        entry = self.nodes.get(node_id, {"max": 1})
        self._update(node_id, "finished", entry["max"], entry["max"])


@dataclass
class RunResult:
    success: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)


@dataclass
class _Run:
    """State of the prompt being executed."""

    prompt: dict[str, Any]
    prompt_id: str
    extra_data: dict[str, Any]
    progress: ProgressRegistry
    result: RunResult = field(default_factory=RunResult)
    executed: list[str] = field(default_factory=list)
    current_outputs: list[str] = field(default_factory=list)
    outputs: dict[str, tuple[Any, ...]] = field(default_factory=dict)


class Executor:
    def __init__(self, settings: SimulatorSettings, folders: Folders, messenger: Messenger, temp_letters: str) -> None:
        self.settings = settings
        self.folders = folders
        self.messenger = messenger
        self.temp_letters = temp_letters
        self.cache = OutputCache()
        self.interrupted = False
        # The running prompt's client: ComfyUI keeps it in its server (``messenger.client_id``, set below
        # too), which is the same thing while prompts run one at a time; with ``parallel_prompts`` each
        # executor sends to its own prompt's client.
        self.client_id: str | None = None

    def interrupt(self) -> None:
        self.interrupted = True

    def _message(self, run: _Run, event: str, data: dict[str, Any], broadcast: bool) -> None:
        """``add_message``: timestamped, kept for the history, sent to the prompt's client."""
        data = {**data, "timestamp": now_ms()}
        run.result.messages.append([event, data])
        if self.client_id is not None or broadcast:
            self.messenger.send(event, data, self.client_id)

    def _send_client(self, event: str, data: dict[str, Any]) -> None:
        if self.client_id is not None:
            self.messenger.send(event, data, self.client_id)

    async def run(
        self, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any], outputs: list[str]
    ) -> RunResult:
        self.interrupted = False
        m = self.messenger
        m.client_id = self.client_id = extra_data.get("client_id")
        run = _Run(prompt, prompt_id, extra_data, ProgressRegistry(prompt_id, m, self.client_id))
        self._message(run, "execution_start", {"prompt_id": prompt_id}, False)
        self.cache.set_prompt(prompt, self.folders)
        cached_nodes = [n for n in prompt if self.cache.get(n) is not None]
        self._message(run, "execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, False)
        run.current_outputs = self.cache.all_node_ids()
        order = ExecutionList(prompt, lambda n: self.cache.get(n) is not None)
        for node_id in outputs:
            order.add_node(node_id)
        failed = False
        while not order.is_empty():
            staged = order.stage()
            if staged is None:
                error = {
                    "node_id": next(iter(order.pending)),
                    "exception_message": "Dependency cycle detected\n",
                    "exception_type": "Exception",
                    "traceback": [],
                    "current_inputs": {},
                }
                self._report(run, error, None)
                failed = True
                break
            if not await self._execute(run, staged):
                failed = True
                break
            order.complete(staged)
        if not failed:
            self._message(run, "execution_success", {"prompt_id": prompt_id}, False)
        run.result.success = not failed
        m.last_node_id = None
        return run.result

    async def _execute(self, run: _Run, node_id: str) -> bool:
        """Run (or replay from the cache) one node; False after reporting an error / interrupt."""
        entry = self.cache.get(node_id)
        if entry is not None:
            self._send_client(
                "executed", {"node": node_id, "display_node": node_id, "output": entry.ui, "prompt_id": run.prompt_id}
            )
            if entry.ui is not None:
                run.result.outputs[node_id] = entry.ui
                run.result.meta[node_id] = _meta(node_id)
            run.progress.finish(node_id)
            return True
        node_def = NODE_CLASSES[run.prompt[node_id]["class_type"]]
        input_data: dict[str, list[Any]] = {}
        try:
            run.progress.start(node_id)
            if self.client_id is not None:
                self.messenger.last_node_id = node_id
            self._send_client("executing", {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id})
            kwargs = self._inputs(run, node_id)
            input_data = {k: [v] for k, v in kwargs.items()}
            if node_def.output_node and not node_def.v3:
                input_data["prompt"] = [run.prompt]
                input_data["extra_pnginfo"] = [run.extra_data.get("extra_pnginfo")]
            if self.interrupted:
                raise InterruptProcessingError()
            ctx = NodeContext(
                self.settings,
                self.folders,
                run.prompt_id,
                node_id,
                run.prompt,
                run.extra_data,
                self.temp_letters,
                lambda nid, v, t, preview: self._progress_hook(run, nid, v, t, preview),
                lambda: self.interrupted,
            )
            out = await node_def.execute(ctx, **kwargs)
        except InterruptProcessingError as iex:
            self._report(run, {"node_id": node_id}, iex)
            return False
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            error = {
                "node_id": node_id,
                "exception_message": f"{ex}\n",
                "exception_type": full_type_name(typ or Exception),
                "traceback": traceback.format_tb(tb),
                "current_inputs": {k: [format_value(x) for x in v] for k, v in input_data.items()},
            }
            self._report(run, error, ex)
            return False
        if out.ui:
            run.result.outputs[node_id] = out.ui
            run.result.meta[node_id] = _meta(node_id)
            self._send_client(
                "executed", {"node": node_id, "display_node": node_id, "output": out.ui, "prompt_id": run.prompt_id}
            )
        self.cache.set(node_id, CacheEntry(out.outputs, out.ui or None))
        run.outputs[node_id] = out.outputs
        run.executed.append(node_id)
        run.progress.finish(node_id)
        return True

    async def _progress_hook(
        self, run: _Run, node_id: str, value: int, total: int, preview: tuple[str, bytes] | None
    ) -> None:
        """comfy's global progress-bar hook: interrupt check, then progress_state, then progress. A preview
        image goes to the prompt's client only: a type 4 frame before ``progress`` when its socket asked
        for metadata, else a type 1 frame after it (the order a real ComfyUI's frames arrive in)."""
        if self.interrupted:
            raise InterruptProcessingError()
        run.progress.update(node_id, value, total)
        m = self.messenger
        data = {"value": value, "max": total, "prompt_id": run.prompt_id, "node": node_id}
        image = Preview(preview[0], preview[1], node_id, run.prompt_id) if preview is not None else None
        with_metadata = m.wants_metadata(self.client_id)
        if image is not None and with_metadata:
            m.send_preview(image, self.client_id)
        m.send("progress", data, self.client_id)
        if image is not None and not with_metadata:
            m.send_preview(image, self.client_id)

    def _inputs(self, run: _Run, node_id: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, value in run.prompt[node_id]["inputs"].items():
            if is_link(value):
                outputs = run.outputs.get(value[0])
                if outputs is None:
                    entry = self.cache.get(value[0])
                    if entry is None:
                        raise KeyError(value[0])
                    outputs = entry.outputs
                values[name] = outputs[value[1]]
            else:
                values[name] = value
        return values

    def _report(self, run: _Run, error: dict[str, Any], ex: BaseException | None) -> None:
        node_id = error["node_id"]
        base = {
            "prompt_id": run.prompt_id,
            "node_id": node_id,
            "node_type": run.prompt[node_id]["class_type"],
            "executed": list(run.executed),
        }
        if isinstance(ex, InterruptProcessingError):
            self._message(run, "execution_interrupted", base, True)
            return
        details = {k: error[k] for k in ("exception_message", "exception_type", "traceback", "current_inputs")}
        self._message(run, "execution_error", {**base, **details, "current_outputs": list(run.current_outputs)}, False)


def _meta(node_id: str) -> dict[str, Any]:
    return {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
