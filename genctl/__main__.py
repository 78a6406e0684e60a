"""genctl: the command-line client of the generation service.

    genctl generate WORKFLOW.json --server HOST:PORT [--json]

People get a live progress line on stderr and the output URLs on stdout; scripts get one JSON object
per event on stdout with --json. The exit status is 0 only when the run completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from generation_service.v1 import generation_pb2 as pb
from generation_service.v1 import generation_pb2_grpc as pb_grpc

EXIT_COMPLETED, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def event_to_json(event: pb.RunEvent) -> dict[str, Any]:
    """A flat JSON object: run_id, seq, time, type, then the event's fields (outputs' fields at top level)."""
    kind = event.WhichOneof("kind") or ""
    body = (
        json_format.MessageToDict(
            getattr(event, kind), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        if kind
        else {}
    )
    if kind == "output_ready":
        body = body.pop("output")
    for output in [body, *body.get("outputs", [])] if kind in ("output_ready", "completed") else []:
        if "media_type" in output:
            output["media_type"] = output["media_type"].removeprefix("MEDIA_TYPE_").lower()
    if kind == "failed":
        body["code"] = body["code"].removeprefix("FAILURE_CODE_").lower()
    return {"run_id": event.run_id, "seq": event.seq, "time": event.time.ToJsonString(), "type": kind, **body}


class ProgressView:
    """Human output: one rewritten status line on a terminal, plain lines otherwise."""

    def __init__(self, err: TextIO, out: TextIO) -> None:
        self.err, self.out = err, out
        self.live = err.isatty()
        self.node = ""

    def show(self, event: pb.RunEvent) -> None:
        kind = event.WhichOneof("kind")
        if kind is not None:
            getattr(self, f"_{kind}")(event)

    def _accepted(self, event: pb.RunEvent) -> None:
        self._line(f"run {event.run_id} accepted (prompt {event.accepted.prompt_id})", final=True)

    def _queued(self, event: pb.RunEvent) -> None:
        self._line(f"queued, {event.queued.position} ahead")

    def _started(self, event: pb.RunEvent) -> None:
        self._line("started")

    def _node_started(self, event: pb.RunEvent) -> None:
        node = event.node_started
        self.node = node.title or node.class_type
        self._line(f"node {node.node_id} {self.node}")

    def _node_progress(self, event: pb.RunEvent) -> None:
        p = event.node_progress
        width = 30
        done = int(width * p.value / p.max) if p.max else 0
        self._line(f"node {p.node_id} {self.node} [{'#' * done}{'.' * (width - done)}] {p.value}/{p.max}")

    def _nodes_cached(self, event: pb.RunEvent) -> None:
        self._line(f"cached: node {', '.join(event.nodes_cached.node_ids)}")

    def _output_ready(self, event: pb.RunEvent) -> None:
        o = event.output_ready.output
        self._line(f"output {o.filename} ({o.mime}, {o.size_bytes} bytes)", final=True)

    def _completed(self, event: pb.RunEvent) -> None:
        c = event.completed
        self._line(
            f"completed in {c.execution.ToTimedelta().total_seconds():.2f} s "
            f"(queued {c.queue_wait.ToTimedelta().total_seconds():.2f} s)",
            final=True,
        )
        for o in c.outputs:
            print(o.url, file=self.out)

    def _failed(self, event: pb.RunEvent) -> None:
        f = event.failed
        where = f" in node {f.node_id} ({f.node_type})" if f.node_id else ""
        self._line(f"FAILED{where}: {f.message}", final=True)

    def _cancelled(self, event: pb.RunEvent) -> None:
        self._line(f"cancelled: {event.cancelled.reason}", final=True)

    def _line(self, text: str, final: bool = False) -> None:
        if self.live:
            self.err.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.err.write(text + "\n")
        self.err.flush()


async def generate(args: argparse.Namespace) -> int:
    try:
        workflow = Path(args.workflow).read_text()
    except OSError as exc:
        print(f"genctl: cannot read {args.workflow}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    request = pb.GenerateRequest(
        workflow_json=workflow, workflow_name=args.name or Path(args.workflow).stem, include_previews=args.previews
    )
    view = ProgressView(sys.stderr, sys.stdout)
    last = ""
    async with grpc.aio.insecure_channel(args.server) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        try:
            async for event in stub.Generate(request):
                last = event.WhichOneof("kind") or ""
                if args.json:
                    print(json.dumps(event_to_json(event)), flush=True)
                else:
                    view.show(event)
        except grpc.aio.AioRpcError as exc:
            print(f"genctl: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_ERROR
    return EXIT_COMPLETED if last == "completed" else EXIT_FAILED


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="genctl", description="Client of the generation service.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="run an API-format workflow and follow its progress")
    gen.add_argument("workflow", help="a ComfyUI workflow exported with 'Save (API)'")
    gen.add_argument(
        "--server",
        default=os.environ.get("GENCTL_SERVER", "127.0.0.1:50051"),
        help="HOST:PORT of the generation service (env GENCTL_SERVER; default %(default)s)",
    )
    gen.add_argument("--json", action="store_true", help="print one JSON object per event on stdout")
    gen.add_argument("--name", default="", help="workflow name to record (default: the file's name)")
    gen.add_argument("--previews", action="store_true", help="also store temporary preview outputs")
    args = parser.parse_args(argv)
    try:
        sys.exit(asyncio.run(generate(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
