"""``PromptQueue`` (pending heap, running set, history) and the single worker of ``main.prompt_worker``."""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

from .executor import Executor
from .faults import Faults
from .messaging import Messenger

log = logging.getLogger(__name__)
MAXIMUM_HISTORY_SIZE = 10000
# (number, prompt_id, prompt, extra_data, outputs_to_execute, sensitive)
QueueItem = tuple[Any, str, dict[str, Any], dict[str, Any], list[str], dict[str, Any]]


class PromptQueue:
    def __init__(self, messenger: Messenger, faults: Faults) -> None:
        self.messenger = messenger
        self.faults = faults
        self._heap: list[tuple[Any, int, QueueItem]] = []
        self._seq = itertools.count()
        self.currently_running: dict[int, QueueItem] = {}
        self._task_counter = itertools.count()
        self.history: dict[str, dict[str, Any]] = {}
        self.flags: dict[str, Any] = {}
        self.wakeup = asyncio.Event()
        faults.set_unstall_listener(self.wakeup.set)

    def queue_remaining(self) -> int:
        return len(self._heap) + len(self.currently_running)

    def put(self, item: QueueItem) -> None:
        if not self.faults.forget_prompts:
            heapq.heappush(self._heap, (item[0], next(self._seq), item))
        self.messenger.queue_updated()
        self.wakeup.set()

    async def get(self) -> tuple[QueueItem, int]:
        while not self._heap or self.faults.stall:
            self.wakeup.clear()
            await self.wakeup.wait()
        item = heapq.heappop(self._heap)[2]
        item_id = next(self._task_counter)
        self.currently_running[item_id] = copy.deepcopy(item)
        self.messenger.queue_updated()
        return item, item_id

    def task_done(self, item_id: int, history_result: dict[str, Any], status: dict[str, Any]) -> None:
        prompt = self.currently_running.pop(item_id)
        if not self.faults.forget_prompts:
            entry = {"prompt": list(prompt[:5]), "outputs": {}, "status": copy.deepcopy(status), **history_result}
            delay = self.faults.history_delay_s
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, self._write_history, prompt[1], entry)
            else:
                self._write_history(prompt[1], entry)
        self.messenger.queue_updated()

    def _write_history(self, prompt_id: str, entry: dict[str, Any]) -> None:
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        self.history[prompt_id] = entry

    def current_queue(self) -> tuple[list[QueueItem], list[QueueItem]]:
        return list(self.currently_running.values()), [entry[2] for entry in self._heap]

    def wipe_queue(self) -> None:
        self._heap = []
        self.messenger.queue_updated()

    def delete_queue_item(self, prompt_id: str) -> bool:
        for x, entry in enumerate(self._heap):
            if entry[2][1] == prompt_id:
                if len(self._heap) == 1:
                    self.wipe_queue()
                else:
                    self._heap.pop(x)
                    heapq.heapify(self._heap)
                self.messenger.queue_updated()
                return True
        return False

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        if prompt_id is not None:
            return {prompt_id: copy.deepcopy(self.history[prompt_id])} if prompt_id in self.history else {}
        out: dict[str, Any] = {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        for i, key in enumerate(self.history):
            if i >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return copy.deepcopy(out)

    def delete_history_item(self, prompt_id: str) -> None:
        self.history.pop(prompt_id, None)

    def wipe_history(self) -> None:
        self.history.clear()


async def prompt_worker(queue: PromptQueue, executor: Executor, messenger: Messenger) -> None:
    """One prompt at a time, lowest ``number`` first; history is written before ``status`` and
    ``executing:null``, as in ComfyUI's ``prompt_worker``."""
    while True:
        item, item_id = await queue.get()
        prompt_id = item[1]
        extra_data = {**item[3], **item[5]}
        try:
            result = await executor.run(item[2], prompt_id, extra_data, item[4])
        except Exception:  # a simulator bug must not kill the worker
            log.exception("prompt %s crashed the simulator's executor", prompt_id)
            from .executor import RunResult

            result = RunResult()
        status = {
            "status_str": "success" if result.success else "error",
            "completed": result.success,
            "messages": result.messages,
        }
        queue.task_done(item_id, {"outputs": result.outputs, "meta": result.meta}, status)
        if messenger.client_id is not None:
            messenger.send("executing", {"node": None, "prompt_id": prompt_id}, messenger.client_id)
        if queue.flags.pop("free_memory", False):
            executor.cache.clear()
        queue.flags.pop("unload_models", None)


async def parallel_prompt_worker(
    queue: PromptQueue, new_executor: Callable[[], Executor], messenger: Messenger, parallel: int
) -> None:
    """Benchmark mode (``SimulatorSettings.parallel_prompts``): up to ``parallel`` prompts at once, each on
    its own executor, so the simulated work of many prompts overlaps. Same messages per prompt as
    ``prompt_worker``; ComfyUI itself never does this."""
    slots = asyncio.Semaphore(parallel)
    tasks: set[asyncio.Task[None]] = set()

    async def run_one(item: QueueItem, item_id: int) -> None:
        from .executor import RunResult

        prompt_id = item[1]
        extra_data = {**item[3], **item[5]}
        client_id = extra_data.get("client_id")
        try:
            result = await new_executor().run(item[2], prompt_id, extra_data, item[4])
        except Exception:
            log.exception("prompt %s crashed the simulator's executor", prompt_id)
            result = RunResult()
        finally:
            slots.release()
        status = {
            "status_str": "success" if result.success else "error",
            "completed": result.success,
            "messages": result.messages,
        }
        queue.task_done(item_id, {"outputs": result.outputs, "meta": result.meta}, status)
        if client_id is not None:
            messenger.send("executing", {"node": None, "prompt_id": prompt_id}, client_id)

    try:
        while True:
            await slots.acquire()
            item, item_id = await queue.get()
            task = asyncio.create_task(run_one(item, item_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
