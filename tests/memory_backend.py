"""An in-memory ComfyUI behind the ``Backend`` protocol, for fast tests of the run logic's edge cases.

It keeps a queue and a history like ComfyUI does. What each submitted prompt does is scripted by the
test (``Script``): the websocket frames it sends, in ComfyUI's shapes (see ``comfy_run``, checked against
the recorded transcripts), when its history is written and how late it shows, which files its history
lists and how their downloads behave. Actions that are not frames (the socket drops, the backend forgets
the prompt, a wait on an ``asyncio.Event`` the test sets) are steps of the same script, and are methods a
test can call directly. Nothing here sleeps: a test waits on its own events, or on ``until``.

``RunLogic`` builds a real ``Runner`` over run storage in a folder and this backend, without gRPC.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfy_generation.runstore import RunStore
from comfy_generation.runstore import events as ev
from generation_service.backend import QUEUE_SNAPSHOT_S, SOCKET_LOST, PoolClient, QueueState, Subscription
from generation_service.comfy_replies import FileRef, HistoryEntry, parse_history_entry
from generation_service.errors import BackendProtocolError, BackendUnavailable, WorkflowRejected
from generation_service.follower import FollowPolicy
from generation_service.metrics import Metrics
from generation_service.pool import BackendConfig, BackendPool
from generation_service.runner import Runner

# The smallest file that sniffs as a PNG, padded so that downloads take several chunks.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
UNTIL_TIMEOUT_S = 10.0
DOWNLOAD_CHUNK = 1024


@dataclass
class OutputFile:
    """A file a prompt's output node writes. Its name follows ComfyUI's: the node's ``filename_prefix``
    in the submitted graph, a counter, and ``ext``; temp files (previews) get ComfyUI's temp names."""

    node_id: str
    data: bytes = PNG
    ext: str = "png"
    type: str = "output"
    ui_key: str = "images"
    fail_after: int | None = None  # every download raises BackendUnavailable after this many bytes
    hold_after: int | None = None  # downloads stop after this many bytes until ``hold`` is set
    hold: asyncio.Event | None = None


class Step:
    """A script step that is not a frame."""


@dataclass(frozen=True)
class WriteHistory(Step):
    """The prompt leaves the queue and its history entry is written (ComfyUI's ``task_done``)."""


@dataclass(frozen=True)
class DropSocket(Step):
    """The backend's websocket goes away (every subscription is told, and marked blind)."""


@dataclass(frozen=True)
class Forget(Step):
    """The backend forgets the prompt: out of the queue, no history (a restart, a cleared queue)."""


@dataclass(frozen=True)
class WaitFor(Step):
    """Play nothing more until the test sets the event."""

    event: asyncio.Event


Frame = dict[str, Any]
ScriptStep = Frame | Step


@dataclass
class Script:
    """What one prompt does once submitted. Frames name the prompt with any ``prompt_id`` (``PROMPT``):
    the backend puts the real one in. A frame ``execution_start`` moves the prompt from pending to running.
    """

    steps: list[ScriptStep]
    outputs: list[OutputFile] = field(default_factory=list)
    status_str: str = "success"
    completed: bool = True
    history_after_lookups: int = 0  # lookups answered "no history" after it was written (a slow proxy)
    history_gate: asyncio.Event | None = None  # no history until this is set
    node_errors: dict[str, Any] = field(default_factory=dict)  # POST /prompt's partial acceptance
    reject: WorkflowRejected | None = None  # POST /prompt refuses the workflow


PROMPT = "<prompt id>"


def _executed(node_id: str, ui: dict[str, Any]) -> Frame:
    return {"type": "executed", "data": {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": PROMPT}}


def comfy_run(
    nodes: Sequence[str], *, outputs: Sequence[OutputFile] = (), progress: dict[str, int] | None = None
) -> list[ScriptStep]:
    """The frames of a successful prompt that executes ``nodes`` in this order, as ComfyUI sends them:
    execution_start, execution_cached, per node progress_state / executing / progress / executed /
    progress_state, execution_success, then the history write, status, and executing null (ComfyUI
    writes the history after execution_success and before the final executing).

    ``progress`` gives a node's sampler steps. The ``executed`` frames list the outputs' files, named
    when the prompt is submitted (their ``output`` is filled in then)."""
    progress = progress or {}
    states: dict[str, dict[str, Any]] = {}

    def progress_state(node_id: str, state: str, value: float, maximum: float) -> Frame:
        states[node_id] = {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": node_id,
            "prompt_id": PROMPT,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }
        return {
            "type": "progress_state",
            "data": {"prompt_id": PROMPT, "nodes": {k: dict(v) for k, v in states.items()}},
        }

    steps: list[ScriptStep] = [
        {"type": "execution_start", "data": {"prompt_id": PROMPT, "timestamp": 0}},
        {"type": "execution_cached", "data": {"nodes": [], "prompt_id": PROMPT, "timestamp": 0}},
    ]
    writers = {o.node_id for o in outputs}
    for node_id in nodes:
        steps.append(progress_state(node_id, "running", 0.0, 1.0))
        steps.append({"type": "executing", "data": {"node": node_id, "display_node": node_id, "prompt_id": PROMPT}})
        total = progress.get(node_id, 0)
        for value in range(1, total + 1):
            steps.append(progress_state(node_id, "running", value, total))
            steps.append(
                {"type": "progress", "data": {"value": value, "max": total, "prompt_id": PROMPT, "node": node_id}}
            )
        if node_id in writers:
            steps.append(_executed(node_id, {}))
        steps.append(progress_state(node_id, "finished", 1.0, 1.0))
    steps += [
        {"type": "execution_success", "data": {"prompt_id": PROMPT, "timestamp": 0}},
        WriteHistory(),
        {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}},
        {"type": "executing", "data": {"node": None, "prompt_id": PROMPT}},
    ]
    return steps


def run_script(
    outputs: Sequence[OutputFile],
    *,
    nodes: Sequence[str] = ("1",),
    progress: dict[str, int] | None = None,
    pause_before: tuple[str, asyncio.Event] | None = None,
    **options: Any,
) -> Script:
    """The script of a successful prompt: ``nodes``, then each output node, as ``comfy_run`` sends them.
    ``pause_before=(frame type, event)`` waits for the event before the first frame of that type."""
    order = list(dict.fromkeys([*nodes, *(o.node_id for o in outputs)]))
    steps = comfy_run(order, outputs=outputs, progress=progress)
    if pause_before is not None:
        kind, event = pause_before
        at = next(i for i, s in enumerate(steps) if isinstance(s, dict) and s["type"] == kind)
        steps.insert(at, WaitFor(event))
    return Script(steps, list(outputs), **options)


@dataclass
class Prompt:
    """A prompt the backend took, and what has happened to it."""

    prompt_id: str
    number: int
    graph: dict[str, Any]
    client_id: str
    script: Script
    files: list[tuple[OutputFile, FileRef]]
    state: str = "pending"  # pending, running, done, forgotten, deleted
    delivered: list[tuple[float, Frame]] = field(default_factory=list)  # (time.time(), frame) that reached the socket
    history_written_at: float | None = None
    forgotten_at: float | None = None
    history_lookups: int = 0
    lookups_since_written: int = 0
    absent_lookups: int = 0  # history lookups while neither queued nor in history
    interrupted: bool = False
    played: int = 0  # script steps played so far
    task: asyncio.Task[None] | None = None

    @property
    def script_done(self) -> bool:
        return self.played == len(self.script.steps)

    @property
    def refs(self) -> list[FileRef]:
        return [ref for _, ref in self.files]

    def arrival(self, kind: str, *, node: object = ...) -> float:
        """When the last delivered frame of this type (and ``node``, for ``executing``) reached the socket."""
        times = [t for t, f in self.delivered if f["type"] == kind and (node is ... or f["data"].get("node") == node)]
        assert times, f"no {kind} frame was delivered"
        return times[-1]


class MemoryBackend:
    """One ComfyUI in memory. ``down`` makes every call raise BackendUnavailable; ``connected`` is the
    websocket; each prompt plays its script in a task of its own from the moment it is submitted."""

    def __init__(self, public_url: str = "http://comfy.test:8188") -> None:
        self._public_url = public_url
        self.on_reconnect: Callable[[], None] = lambda: None
        self.on_connect: Callable[[], None] = lambda: None
        self.offered_classes: frozenset[str] = frozenset()  # none known: the pool leaves validation to it
        self.connected = True
        self.client_id = str(uuid.uuid4())
        self.down = False
        self.scripts: collections.deque[Script] = collections.deque()  # for the next submissions, in order
        self.default_script: Callable[[], Script] = lambda: Script(comfy_run(["1"]))
        self.prompts: dict[str, Prompt] = {}
        self.queue: list[str] = []  # prompt ids queued or running, in the order they were taken
        self.history_entries: dict[str, dict[str, Any]] = {}  # the raw /history JSON of finished prompts
        self.subscriptions: dict[str, Subscription] = {}
        self.files: dict[FileRef, OutputFile] = {}  # written by finished prompts
        self.uploads: dict[str, bytes] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.unavailable: collections.Counter[str] = collections.Counter()  # calls refused while down
        self.downloads: collections.Counter[FileRef] = collections.Counter()  # downloads started, per file
        self.completed_downloads: collections.Counter[FileRef] = collections.Counter()  # every byte delivered
        self.holding: set[FileRef] = set()  # downloads stopped at their ``hold_after``
        self._counters: dict[str, itertools.count[int]] = {}
        self._taken: list[str] = []  # prompts next_prompt returned
        self._changed = asyncio.Event()

    @property
    def public_url(self) -> str:
        return self._public_url

    # -- what tests use ---------------------------------------------------------------------------

    def _pulse(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = UNTIL_TIMEOUT_S) -> None:
        """Wait until ``predicate()`` holds; it is checked whenever the backend is called or a script
        step is played. Raises TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def next_prompt(self, timeout: float = UNTIL_TIMEOUT_S) -> Prompt:
        """The first prompt submitted after the ones seen so far (waits for it)."""
        seen = len(self._taken)
        await self.until(lambda: len(self.prompts) > seen, timeout)
        prompt = list(self.prompts.values())[seen]
        self._taken.append(prompt.prompt_id)
        return prompt

    def drop_socket(self) -> None:
        """The websocket goes away: runs must follow /queue and /history (ComfyBackend's behaviour)."""
        self.connected = False
        self.client_id = ""
        for sub in self.subscriptions.values():
            if not sub.blind:
                sub.blind = True
                sub.frames.put_nowait(SOCKET_LOST)
        self._pulse()

    def reconnect(self) -> None:
        """A new websocket, with a fresh clientId: prompts submitted before get no more frames."""
        self.connected = True
        self.client_id = str(uuid.uuid4())
        self._pulse()

    def forget(self, prompt_id: str) -> None:
        prompt = self.prompts[prompt_id]
        with contextlib.suppress(ValueError):
            self.queue.remove(prompt_id)
        self.history_entries.pop(prompt_id, None)
        prompt.state = "forgotten"
        prompt.forgotten_at = time.time()
        self._pulse()

    def write_history(self, prompt_id: str, messages: Sequence[tuple[str, dict[str, Any]]] = ()) -> None:
        """The prompt is done: out of the queue, its history written and its files on the backend."""
        prompt = self.prompts[prompt_id]
        with contextlib.suppress(ValueError):
            self.queue.remove(prompt_id)
        now_ms = int(time.time() * 1000)
        script = prompt.script
        status_messages = [
            ["execution_start", {"prompt_id": prompt_id, "timestamp": now_ms}],
            ["execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": now_ms}],
            *([name, data] for name, data in messages),
        ]
        if script.status_str == "success":
            status_messages.append(["execution_success", {"prompt_id": prompt_id, "timestamp": now_ms}])
        outputs: dict[str, dict[str, list[dict[str, str]]]] = {}
        for output, ref in prompt.files:
            entry = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
            outputs.setdefault(output.node_id, {}).setdefault(output.ui_key, []).append(entry)
            self.files[ref] = output
        output_nodes = list(outputs)
        self.history_entries[prompt_id] = {
            "prompt": [prompt.number, prompt_id, prompt.graph, {"client_id": prompt.client_id}, output_nodes],
            "outputs": outputs,
            "status": {"status_str": script.status_str, "completed": script.completed, "messages": status_messages},
            "meta": {
                n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in output_nodes
            },
        }
        prompt.state = "done"
        prompt.history_written_at = time.time()
        prompt.lookups_since_written = 0
        self._pulse()

    def emit(self, prompt_id: str, frame: Frame) -> None:
        """Send one frame as ComfyUI does: to the prompt's client only, and lost if that socket is gone."""
        prompt = self.prompts[prompt_id]
        frame = _with_prompt_id(frame, prompt)
        if frame["type"] == "execution_start" and prompt.state == "pending":
            prompt.state = "running"
        sub = self.subscriptions.get(prompt_id)
        if self.connected and prompt.client_id == self.client_id and sub is not None and "prompt_id" in frame["data"]:
            sub.frames.put_nowait(frame)
            prompt.delivered.append((time.time(), frame))
        self._pulse()

    # -- what the pool needs (PoolClient) -----------------------------------------------------------

    async def start(self) -> None:
        pass

    async def queue_snapshot(self, max_age_s: float = QUEUE_SNAPSHOT_S) -> dict[str, QueueState]:
        return {p: s for p in self.queue if (s := await self.queue_state(p)) is not None}

    async def node_classes(self) -> frozenset[str]:
        return self.offered_classes

    async def close(self) -> None:
        tasks = [p.task for p in self.prompts.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- playing scripts --------------------------------------------------------------------------

    async def _play(self, prompt: Prompt) -> None:
        for step in prompt.script.steps:
            if isinstance(step, WaitFor):
                await step.event.wait()
            elif isinstance(step, WriteHistory):
                self.write_history(prompt.prompt_id)
            elif isinstance(step, DropSocket):
                self.drop_socket()
            elif isinstance(step, Forget):
                self.forget(prompt.prompt_id)
            elif isinstance(step, dict):
                self.emit(prompt.prompt_id, step)
            prompt.played += 1
            await asyncio.sleep(0)  # like frames off a socket: the run gets to read each one in turn
        self._pulse()

    def _file_refs(self, graph: dict[str, Any], outputs: Sequence[OutputFile]) -> list[tuple[OutputFile, FileRef]]:
        refs = []
        for output in outputs:
            if output.type == "temp":
                counter = self._counters.setdefault("<temp>", itertools.count(1))
                ref = FileRef(f"ComfyUI_temp_{uuid.uuid4().hex[:5]}_{next(counter):05}_.{output.ext}", "", "temp")
            else:
                node = graph.get(output.node_id, {})
                prefix = str((node.get("inputs") or {}).get("filename_prefix", "ComfyUI"))
                subfolder, _, base = prefix.rpartition("/")
                counter = self._counters.setdefault(prefix, itertools.count(1))
                ref = FileRef(f"{base}_{next(counter):05}_.{output.ext}", subfolder, output.type)
            refs.append((output, ref))
        return refs

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        self._pulse()
        if self.down:
            self.unavailable[name] += 1
            raise BackendUnavailable(f"backend {self.public_url} unreachable ({name}): connection refused")

    # -- the Backend protocol ---------------------------------------------------------------------

    def subscribe(self, prompt_id: str, frames: asyncio.Queue[Any] | None = None) -> Subscription:
        sub = Subscription(prompt_id) if frames is None else Subscription(prompt_id, frames=frames)
        self.subscriptions[prompt_id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if self.subscriptions.get(sub.prompt_id) is sub:
            del self.subscriptions[sub.prompt_id]

    async def wait_connected(self, timeout_s: float) -> bool:
        return self.connected  # like ComfyBackend while its socket is refused: no wait

    async def submit(self, sub: Subscription, graph: dict[str, Any]) -> dict[str, Any]:
        self._call("submit")
        script = self.scripts.popleft() if self.scripts else self.default_script()
        if script.reject is not None:
            raise script.reject
        sub.client_id = self.client_id or str(uuid.uuid4())
        sub.blind = not self.connected
        prompt = Prompt(
            sub.prompt_id, len(self.prompts), graph, sub.client_id, script, self._file_refs(graph, script.outputs)
        )
        for i, step in enumerate(script.steps):  # the executed frames list the files just named
            if isinstance(step, dict) and step["type"] == "executed":
                node = step["data"]["node"]
                ui: dict[str, list[dict[str, str]]] = {}
                for output, ref in prompt.files:
                    if output.node_id == node:
                        entry = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
                        ui.setdefault(output.ui_key, []).append(entry)
                script.steps[i] = {**step, "data": {**step["data"], "output": ui}}
        self.prompts[prompt.prompt_id] = prompt
        self.queue.append(prompt.prompt_id)
        prompt.task = asyncio.create_task(self._play(prompt), name=f"memory-prompt-{prompt.prompt_id}")
        self._pulse()
        return dict(script.node_errors)

    async def queue_state(self, prompt_id: str, max_age_s: float = QUEUE_SNAPSHOT_S) -> QueueState | None:
        """Always fresh (``max_age_s`` is moot for one in-memory queue)."""
        self._call("queue_state")
        running = [p for p in self.queue if self.prompts[p].state == "running"]
        pending = [p for p in self.queue if self.prompts[p].state == "pending"]
        if prompt_id in running:
            return QueueState(running=True, ahead=0)
        if prompt_id in pending:
            return QueueState(running=False, ahead=len(running) + pending.index(prompt_id))
        return None

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        self._call("history")
        prompt = self.prompts.get(prompt_id)
        if prompt is None:
            return None
        prompt.history_lookups += 1
        raw = self.history_entries.get(prompt_id)
        if raw is None:
            if prompt_id not in self.queue:
                prompt.absent_lookups += 1
            return None
        prompt.lookups_since_written += 1
        gate = prompt.script.history_gate
        if (
            gate is not None and not gate.is_set()
        ) or prompt.lookups_since_written <= prompt.script.history_after_lookups:
            return None
        return parse_history_entry(raw)

    async def download(self, ref: FileRef) -> AsyncIterator[bytes]:
        self._call("download")
        output = self.files.get(ref)
        if output is None:
            raise BackendProtocolError(f"GET /view of {ref.filename!r} answered 404")
        self.downloads[ref] += 1
        data, sent = output.data, 0
        while sent < len(data):
            if output.fail_after is not None and sent >= output.fail_after:
                raise BackendUnavailable(f"download of {ref.filename!r} broke off after {sent} bytes")
            if output.hold is not None and output.hold_after is not None and sent >= output.hold_after:
                self.holding.add(ref)
                self._pulse()
                try:
                    await output.hold.wait()
                finally:
                    self.holding.discard(ref)
            end = min(len(data), sent + DOWNLOAD_CHUNK)
            for limit in (output.fail_after, output.hold_after):
                if limit is not None and sent < limit:
                    end = min(end, limit)
            yield data[sent:end]
            sent = end
        self.completed_downloads[ref] += 1
        self._pulse()

    async def delete(self, prompt_id: str) -> None:
        self._call("delete")
        prompt = self.prompts.get(prompt_id)
        if prompt is not None and prompt.state == "pending":
            self.queue.remove(prompt_id)
            prompt.state = "deleted"
            if prompt.task is not None:
                prompt.task.cancel()

    async def interrupt(self, prompt_id: str) -> None:
        """Stop the prompt if it runs: its script stops, and it ends as ComfyUI ends an interrupted prompt."""
        self._call("interrupt")
        prompt = self.prompts.get(prompt_id)
        if prompt is None or prompt.state != "running":
            return
        if prompt.task is not None:
            prompt.task.cancel()
        prompt.interrupted = True
        prompt.script.status_str, prompt.script.completed = "error", False
        prompt.files = []  # an interrupted prompt lists no outputs
        interrupted = {"prompt_id": prompt_id, "node_id": "", "node_type": "", "executed": [], "timestamp": 0}
        self.emit(prompt_id, {"type": "execution_interrupted", "data": interrupted})
        self.write_history(prompt_id, [("execution_interrupted", interrupted)])
        self.emit(prompt_id, {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}})

    async def upload(self, data: bytes, filename: str, subfolder: str = "") -> str:
        self._call("upload")
        name = f"{subfolder}/{filename}" if subfolder else filename
        self.uploads[name] = data
        return name

    async def probe(self) -> bool:
        self.calls["probe"] += 1
        return not self.down


def _with_prompt_id(frame: Frame, prompt: Prompt) -> Frame:
    data = frame.get("data")
    if not isinstance(data, dict) or "prompt_id" not in data:
        return frame
    data = {**data, "prompt_id": prompt.prompt_id}
    if frame["type"] == "progress_state":
        data["nodes"] = {k: {**v, "prompt_id": prompt.prompt_id} for k, v in data["nodes"].items()}
    if "timestamp" in data:
        data["timestamp"] = int(time.time() * 1000)
    return {**frame, "data": data}


if TYPE_CHECKING:  # the protocol is checked here: drift in either fails `make typecheck`
    _: PoolClient = MemoryBackend()


# -- a Runner over it, without gRPC ---------------------------------------------------------------------


def small_policy(**overrides: Any) -> FollowPolicy:
    """A FollowPolicy with timings small enough for runs of milliseconds."""
    values: dict[str, Any] = {
        "media_base_url": "http://media.test",
        "poll_s": 0.02,
        "keepalive_s": 0.05,
        "cancel_confirm_s": 0.5,
        "poll_failures_tolerated": 1000,
        "lost_grace_s": 0.5,
    }
    values.update(overrides)
    return FollowPolicy(**values)


class RunLogic:
    """A real Runner over run storage in ``root`` and a MemoryBackend; ``restart`` is a service restart."""

    def __init__(self, root: Path, backend: MemoryBackend, policy: FollowPolicy) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.store = RunStore(root)
        self.backend = backend
        self.policy = policy
        self.runner = self.new_runner()

    def new_runner(self) -> Runner:
        metrics = Metrics()
        config = BackendConfig(self.backend.public_url, self.backend.public_url)
        pool = BackendPool([config], metrics, clients={config.name: self.backend})
        return Runner(self.store, pool, self.policy, metrics=metrics)

    async def restart(self, *, recover: bool = True) -> Runner:
        """Stop the runner (its runs stay unfinished in storage), then start a new one over the same
        storage; the new process's socket has a new clientId."""
        await self.runner.close()
        self.backend.reconnect()
        self.runner = self.new_runner()
        if recover:
            await self.runner.recover()
        return self.runner

    async def events(self, run_id: str, *, timeout: float = UNTIL_TIMEOUT_S) -> list[ev.RunEvent]:
        """Every event of the run, from the first to the terminal one (waits for it)."""
        async with asyncio.timeout(timeout):
            return [e async for e in await self.runner.watch(run_id)]

    async def until_event(
        self, run_id: str, predicate: Callable[[ev.RunEvent], bool], *, timeout: float = UNTIL_TIMEOUT_S
    ) -> ev.RunEvent:
        """The first event of the run (from its start) that satisfies ``predicate``."""
        async with asyncio.timeout(timeout):
            async for event in await self.runner.watch(run_id):
                if predicate(event):
                    return event
        raise AssertionError(f"run {run_id} ended without such an event")

    async def close(self) -> None:
        await self.runner.close()
        await self.backend.close()
