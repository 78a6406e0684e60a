"""genctl: the command-line client of the generation service, built on generation_client.

    genctl generate WORKFLOW.json [--json]                 run a workflow, follow it live
    genctl generate --template NAME --param k=v ... [--input name=FILE]
    genctl submit ... / watch RUN_ID / get RUN_ID / list / cancel RUN_ID
    genctl templates / describe NAME

People get a live progress line on stderr and the output URLs on stdout; scripts get one JSON object
per event (or per result) on stdout with --json. Exit status: 0 when the run completed (or the
command succeeded), 1 when the run failed or was cancelled, 2 for a refused request or a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from genctl.output import ProgressView, event_to_json, message_to_json
from generation_client import AsyncGenerationClient, GenerationClientError, event_kind
from generation_client.requests import Param
from generation_service.v1 import generation_pb2 as pb

EXIT_COMPLETED, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


class UsageError(Exception):
    pass


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """generate/submit arguments as client keyword arguments."""
    if bool(args.workflow) == bool(args.template):
        raise UsageError("give a WORKFLOW file or --template NAME (not both)")
    params: dict[str, Param] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {item!r}: write it as name=value")
        params[key] = value
    for item in args.input:
        key, sep, value = item.partition("=")
        path = Path(value)
        if not sep or not key or not path.is_file():
            raise UsageError(f"--input {item!r}: write it as name=FILE with an existing file")
        params[key] = path
    if params and not args.template:
        raise UsageError("--param and --input go with --template")
    workflow: Path | None = None
    if args.workflow:
        workflow = Path(args.workflow)
        if not workflow.is_file():
            raise UsageError(f"cannot read {args.workflow}: no such file")
    return {
        "workflow": workflow,
        "template": args.template,
        "params": params,
        "name": args.name,
        "request_id": args.request_id,
        "include_previews": args.previews,
        "detach": args.detach,
    }


async def follow(events: AsyncIterator[pb.RunEvent], as_json: bool) -> int:
    view = ProgressView(sys.stderr, sys.stdout)
    last = ""
    async for event in events:
        last = event_kind(event)
        if as_json:
            print(json.dumps(event_to_json(event)), flush=True)
        else:
            view.show(event)
    return EXIT_COMPLETED if last == "completed" else EXIT_FAILED


def print_json(data: Any) -> int:
    print(json.dumps(data, indent=2))
    return EXIT_COMPLETED


async def cmd_generate(client: AsyncGenerationClient, args: argparse.Namespace) -> int:
    return await follow(client.generate(**run_options(args)), args.json)


async def cmd_submit(client: AsyncGenerationClient, args: argparse.Namespace) -> int:
    return print_json(message_to_json(await client.submit(**run_options(args))))


async def cmd_watch(client: AsyncGenerationClient, args: argparse.Namespace) -> int:
    return await follow(client.watch(args.run_id, args.after_seq), args.json)


async def cmd_get(client: AsyncGenerationClient, args: argparse.Namespace) -> int:
    return print_json(message_to_json(await client.get(args.run_id)))


async def cmd_cancel(client: AsyncGenerationClient, args: argparse.Namespace) -> int:
    return print_json(message_to_json(await client.cancel(args.run_id, args.reason)))


async def cmd_list(client: AsyncGenerationClient, args: argparse.Namespace) -> int:
    statuses = [pb.RunStatus.Value(f"RUN_STATUS_{s.upper()}") for s in args.status]
    found: list[dict[str, Any]] = []
    async for run in client.runs(statuses):
        if len(found) == args.limit:
            break
        found.append(message_to_json(run))
    return print_json(found)


async def cmd_templates(client: AsyncGenerationClient, args: argparse.Namespace) -> int:
    templates = await client.templates()
    if args.json:
        return print_json([message_to_json(t) for t in templates])
    for t in templates:
        print(f"{t.name:<28} {pb.MediaType.Name(t.media).removeprefix('MEDIA_TYPE_').lower():<6} {t.description}")
    return EXIT_COMPLETED


async def cmd_describe(client: AsyncGenerationClient, args: argparse.Namespace) -> int:
    return print_json(message_to_json(await client.describe(args.name)))


async def cmd_backends(client: AsyncGenerationClient, args: argparse.Namespace) -> int:
    backends = await client.backends()
    if args.json:
        return print_json([message_to_json(b) for b in backends])
    print(f"{'NAME':<24} {'STATE':<5} {'QUEUE':>5} {'HERE':>4} {'NODES':>5}  URL / LAST ERROR")
    for b in backends:
        state = "up" if b.up else "down"
        where = b.url + (f"  [{b.last_error}]" if b.last_error else "")
        print(f"{b.name:<24} {state:<5} {b.queue_length:>5} {b.runs_in_flight:>4} {b.node_class_count:>5}  {where}")
    return EXIT_COMPLETED


COMMANDS = {
    "backends": cmd_backends,
    "generate": cmd_generate,
    "submit": cmd_submit,
    "watch": cmd_watch,
    "get": cmd_get,
    "cancel": cmd_cancel,
    "list": cmd_list,
    "templates": cmd_templates,
    "describe": cmd_describe,
}


def _connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--server, --token, --tls, --tls-ca: accepted before and after the command."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS  # after the command: only when given

    parser.add_argument(
        "--server",
        default=default(os.environ.get("GENCTL_SERVER", "127.0.0.1:50051")),
        help="HOST:PORT of the service (env GENCTL_SERVER; default 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--token",
        default=default(os.environ.get("GENCTL_TOKEN")),
        help="bearer token (env GENCTL_TOKEN; prefer the variable: flags show in ps)",
    )
    parser.add_argument(
        "--tls", action="store_true", default=default(False), help="connect with TLS (system CAs unless --tls-ca)"
    )
    parser.add_argument(
        "--tls-ca", type=Path, default=default(None), help="PEM file of the CA that signed the service's certificate"
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="genctl", description="Client of the generation service.")
    _connection_options(top, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, defaults=False)
    commands = top.add_subparsers(dest="command", required=True)
    for name, text in (
        ("generate", "run a workflow or template and follow it live"),
        ("submit", "start a run and print it at once"),
    ):
        cmd = commands.add_parser(name, help=text, parents=[common])
        cmd.add_argument("workflow", nargs="?", help="a ComfyUI workflow exported with 'Save (API)'")
        cmd.add_argument("--template", default="", help="a template name (see 'genctl templates')")
        cmd.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a template parameter")
        cmd.add_argument(
            "--input",
            action="append",
            default=[],
            metavar="NAME=FILE",
            help="a media parameter from a file (image, audio or video)",
        )
        cmd.add_argument("--name", default="", help="workflow name to record (default: the file's name)")
        cmd.add_argument("--request-id", default="", help="makes retries return the same run")
        cmd.add_argument("--previews", action="store_true", help="also store temporary preview outputs")
        cmd.add_argument("--detach", action="store_true", help="let the run finish if genctl is interrupted")
        cmd.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    watch = commands.add_parser("watch", help="follow a run's events (past ones first)", parents=[common])
    watch.add_argument("run_id")
    watch.add_argument("--after-seq", type=int, default=0, help="skip events up to this seq")
    watch.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    commands.add_parser("get", help="print a run", parents=[common]).add_argument("run_id")
    cancel = commands.add_parser("cancel", help="cancel a run (idempotent)", parents=[common])
    cancel.add_argument("run_id")
    cancel.add_argument("--reason", default="", help="recorded in the run's cancelled event")
    runs = commands.add_parser("list", help="print runs, newest first", parents=[common])
    runs.add_argument(
        "--status",
        action="append",
        default=[],
        choices=["accepted", "queued", "running", "completed", "failed", "cancelled"],
    )
    runs.add_argument("--limit", type=int, default=50, help="at most this many runs (default %(default)s)")
    templates = commands.add_parser("templates", help="list the templates in service", parents=[common])
    templates.add_argument("--json", action="store_true", help="print them as JSON, with parameters")
    commands.add_parser("describe", help="print a template's parameters", parents=[common]).add_argument("name")
    backends = commands.add_parser("backends", help="list the service's backends and their state", parents=[common])
    backends.add_argument("--json", action="store_true", help="print them as JSON")
    return top


async def amain(args: argparse.Namespace) -> int:
    ca_pem = args.tls_ca.read_bytes() if args.tls_ca else None
    async with AsyncGenerationClient(args.server, token=args.token, tls=args.tls, ca_pem=ca_pem) as client:
        try:
            return await COMMANDS[args.command](client, args)
        except GenerationClientError as exc:
            print(f"genctl: {exc}", file=sys.stderr)
            for field, problem in exc.violations.items():
                print(f"  {field}: {problem}", file=sys.stderr)
            return EXIT_ERROR
        except UsageError as exc:
            print(f"genctl: {exc}", file=sys.stderr)
            return EXIT_ERROR


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        sys.exit(asyncio.run(amain(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
