"""The bare baseline: ``python -m benchmarks.echo --port P --runs R --steps S --seconds T --ready-file F``.

A grpc.aio server-streaming "watch" with nothing behind it: R simulated runs, each fanning its events out
to every stream watching it (one asyncio.Queue per stream). A stream gets one event at once, then, after
SIGUSR2, S ``node_progress`` events spread over T seconds and a ``completed`` event. Each event is a real
``RunEvent`` stamped (``time``) when it is broadcast. Server options: the service's own (raised
pending-call limits), so both hold the same streams under the same limits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from benchmarks.common import raise_fd_limit
from comfygen.v1 import generation_pb2 as pb
from generation_service.server import SERVER_OPTIONS


class Hub:
    def __init__(self, runs: int) -> None:
        self.run_ids = [str(uuid.uuid4()) for _ in range(runs)]
        self.watchers: list[set[asyncio.Queue[pb.RunEvent | None]]] = [set() for _ in range(runs)]
        self.go = asyncio.Event()

    def broadcast(self, run: int, event: pb.RunEvent, last: bool) -> None:
        event.time.FromNanoseconds(time.time_ns())
        for q in self.watchers[run]:
            q.put_nowait(event)
            if last:
                q.put_nowait(None)

    async def emit(self, run: int, steps: int, seconds: float) -> None:
        await self.go.wait()
        start = time.monotonic() + (run / len(self.run_ids)) * (seconds / steps)  # spread the runs' phases
        run_id = self.run_ids[run]
        for step in range(1, steps + 1):
            delay = start + seconds * step / steps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event = pb.RunEvent(
                run_id=run_id, seq=step + 1, node_progress=pb.NodeProgress(node_id="1", value=step, max=steps)
            )
            self.broadcast(run, event, last=False)
        self.broadcast(run, pb.RunEvent(run_id=run_id, seq=steps + 2, completed=pb.Completed()), last=True)

    async def watch(self, request: bytes, context: Any) -> AsyncIterator[pb.RunEvent]:
        run = int(request.decode())
        q: asyncio.Queue[pb.RunEvent | None] = asyncio.Queue()
        self.watchers[run].add(q)
        try:
            yield pb.RunEvent(run_id=self.run_ids[run], seq=1, accepted=pb.Accepted(prompt_id=self.run_ids[run]))
            while (event := await q.get()) is not None:
                yield event
        finally:
            self.watchers[run].discard(q)


async def serve(args: argparse.Namespace) -> None:
    raise_fd_limit()
    hub = Hub(args.runs)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_stream_rpc_method_handler(
        hub.watch, request_deserializer=None, response_serializer=pb.RunEvent.SerializeToString
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Watch": handler})])
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, hub.go.set)
    emitters = [asyncio.create_task(hub.emit(r, args.steps, args.seconds)) for r in range(args.runs)]
    Path(args.ready_file).write_text(json.dumps({"port": port}) + "\n")
    await stop.wait()
    for t in emitters:
        t.cancel()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--ready-file", required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
