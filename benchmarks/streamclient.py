"""A load-client process: ``python -m benchmarks.streamclient SPEC.json``.

Opens many server streams at once over a few channels (each its own TCP connection) and records, for
every event, when it arrived. Modes:
- ``generate``: one ``Generate`` per stream (genctl's call: grpc.aio, ``stub.Generate(request)``);
- ``watch``: ``WatchRun(run_id, after_seq=0)`` on the given runs, round-robin (and, given ``targets``,
  round-robin over those servers);
- ``echo``: the bare grpc.aio echo (``benchmarks.echo``), same shape as ``watch``.
Writes ``ready_file`` once every stream got its first event, and the results to ``out_file``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc

from benchmarks.common import raise_fd_limit
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc

TERMINAL = {"completed", "failed", "cancelled"}
ECHO_METHOD = "/bench.Echo/Watch"
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel, not one shared
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class Stream:
    __slots__ = ("events", "first", "terminal", "error", "last_seq", "coalesced", "prompt_id", "previews")

    def __init__(self) -> None:
        self.events = 0
        self.first = asyncio.Event()
        self.terminal = ""
        self.error = ""
        self.last_seq = 0
        self.coalesced = 0  # events left out (seq gaps): only progress may be, which the bench checks
        self.prompt_id = ""
        self.previews = 0


class Recorder:
    """What every stream of this process received, and when."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.prompt_index: dict[str, int] = {}
        self.progress: list[tuple[int, str, int, int]] = []  # (prompt index, node, value, recv ns)
        self.recv_ns: list[int] = []
        self.echo_lat_ns: list[int] = []
        self.missing: dict[str, set[int]] = {}  # run id -> the seqs some stream of it did not get

    def _calls(self, ch: grpc.aio.Channel, i: int) -> AsyncIterable[pb.RunEvent]:
        mode = self.spec["mode"]
        if mode == "echo":
            watch: Any = ch.unary_stream(ECHO_METHOD, response_deserializer=pb.RunEvent.FromString)
            return cast(AsyncIterable[pb.RunEvent], watch(str(i % self.spec["runs"]).encode()))
        stub = pb_grpc.GenerationServiceStub(ch)
        if mode == "generate":
            spec = pb.RunSpec(workflow_json=self.spec["workflow"], workflow_name="bench")
            return _events(stub.Generate(pb.GenerateRequest(spec=spec)))
        run_ids = self.spec["run_ids"]
        return _events(stub.WatchRun(pb.WatchRunRequest(run_id=run_ids[i % len(run_ids)], after_seq=0)))

    def _on_event(self, s: Stream, event: pb.RunEvent, now: int) -> None:
        s.events += 1
        self.recv_ns.append(now)
        s.first.set()
        kind = event.WhichOneof("kind") or ""
        if kind == "preview":  # not journaled: it carries the seq of the event before it
            s.previews += 1
            return
        if self.spec["mode"] == "echo":
            if kind == "node_progress":
                self.echo_lat_ns.append(now - event.time.ToNanoseconds())
        else:
            if event.seq != s.last_seq + 1:
                s.coalesced += event.seq - s.last_seq - 1
                self.missing.setdefault(event.run_id, set()).update(range(s.last_seq + 1, event.seq))
            s.last_seq = event.seq
            if kind == "accepted":
                s.prompt_id = event.accepted.prompt_id
            elif kind == "node_progress" and s.prompt_id:
                index = self.prompt_index.setdefault(s.prompt_id, len(self.prompt_index))
                self.progress.append((index, event.node_progress.node_id, event.node_progress.value, now))
        if kind in TERMINAL:
            s.terminal = kind

    async def stream(self, s: Stream, ch: grpc.aio.Channel, i: int) -> None:
        try:
            async for event in self._calls(ch, i):
                self._on_event(s, event, time.time_ns())
        except grpc.aio.AioRpcError as exc:
            s.error = f"{exc.code().name}: {exc.details()}"
        except Exception as exc:  # a bench client reports, never hides, what went wrong
            s.error = f"{type(exc).__name__}: {exc}"
        finally:
            s.first.set()


async def main(spec: dict[str, Any]) -> None:
    raise_fd_limit()
    n: int = spec["streams"]
    # Several targets (``targets``): as many channels to each (``channels`` rounded up to a multiple of
    # their number), so stream i goes to target i % len(targets).
    targets: list[str] = spec.get("targets") or [spec["target"]]
    per_target = -(-spec["channels"] // len(targets))
    channels = [
        grpc.aio.insecure_channel(targets[j % len(targets)], options=CHANNEL_OPTIONS)
        for j in range(per_target * len(targets))
    ]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 30)
    streams = [Stream() for _ in range(n)]
    rec = Recorder(spec)
    started = time.monotonic()
    tasks = [asyncio.create_task(rec.stream(streams[i], channels[i % len(channels)], i)) for i in range(n)]
    await asyncio.gather(*(s.first.wait() for s in streams))
    opened_s = time.monotonic() - started
    Path(spec["ready_file"]).write_text(json.dumps({"opened_s": opened_s}) + "\n")
    await asyncio.gather(*tasks)
    for ch in channels:
        await ch.close()
    errors: dict[str, int] = {}
    for s in streams:
        if s.error:
            errors[s.error[:200]] = errors.get(s.error[:200], 0) + 1
    result = {
        "opened_s": opened_s,
        "streams": n,
        "terminal": sum(1 for s in streams if s.terminal),
        "completed": sum(1 for s in streams if s.terminal == "completed"),
        "errors": errors,
        "coalesced": sum(s.coalesced for s in streams),
        "missing": {run_id: sorted(seqs) for run_id, seqs in rec.missing.items()},
        "previews": sum(s.previews for s in streams),
        "events": sum(s.events for s in streams),
        "prompts": {v: k for k, v in rec.prompt_index.items()},
        "progress": rec.progress,
        "recv_ns": rec.recv_ns,
        "echo_lat_ns": rec.echo_lat_ns,
    }
    Path(spec["out_file"]).write_text(json.dumps(result))


async def _events(call: AsyncIterable[Any]) -> AsyncIterator[pb.RunEvent]:
    """The events of a Generate or WatchRun call (each reply carries one)."""
    async for reply in call:
        yield reply.event


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
