"""genctl: the generation service from a shell.

    genctl generate WORKFLOW.json [--json]     run a workflow, follow it live
    genctl generate --template NAME --param k=v ... [--input name=FILE]
    genctl submit ... / watch RUN_ID / get RUN_ID / list / cancel RUN_ID
    genctl templates / describe NAME / backends

People get live progress on stderr, tables and the output URLs on stdout; scripts get one JSON object
per event (or per result) on stdout with --json. Exit status (see EXIT_* below): 0 the run completed or
the command succeeded, 1 the run failed or was cancelled, 2 a usage error, 3 the service refused the
request (invalid, conflicting, overloaded), 4 no such run or template, 5 the service or its backend
cannot be reached, 6 authentication failed, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console

from comfygen.v1 import generation_pb2 as pb
from genctl import output
from generation_client import AsyncGenerationClient, GenerationClientError, event_kind, event_to_dict, message_to_dict
from generation_client.requests import Param

EXIT_COMPLETED, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_AUTH = range(7)
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
}
DEFAULT_PORT = 50051


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
    }


class Session:
    """What genctl knows of the run it follows: so that Ctrl-C can say what became of it."""

    run_id = ""
    detach = False


async def follow(events: AsyncIterator[pb.RunEvent], as_json: bool, session: Session) -> int:
    view = None if as_json else output.ProgressView(sys.stderr, sys.stdout)
    last = ""
    try:
        async for event in events:
            session.run_id, last = event.run_id, event_kind(event)
            if view is None:
                output.print_json(event_to_dict(event), sys.stdout)
            else:
                view.show(event)
    finally:
        if view is not None:
            view.close()
    return EXIT_COMPLETED if last == "completed" else EXIT_FAILED


def show(data: Any, table: Any, as_json: bool) -> int:
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        Console(highlight=False, soft_wrap=True).print(table)
    return EXIT_COMPLETED


async def cmd_generate(client: AsyncGenerationClient, args: argparse.Namespace, session: Session) -> int:
    session.detach = args.detach
    return await follow(client.generate(**run_options(args), detach=args.detach), args.json, session)


async def cmd_submit(client: AsyncGenerationClient, args: argparse.Namespace, session: Session) -> int:
    run = await client.submit(**run_options(args))
    return show(message_to_dict(run), output.run_table(run), args.json)


async def cmd_watch(client: AsyncGenerationClient, args: argparse.Namespace, session: Session) -> int:
    session.detach = True  # watching never cancels the run
    return await follow(client.watch(args.run_id, args.after_seq), args.json, session)


async def cmd_get(client: AsyncGenerationClient, args: argparse.Namespace, session: Session) -> int:
    run = await client.get(args.run_id)
    return show(message_to_dict(run), output.run_table(run), args.json)


async def cmd_cancel(client: AsyncGenerationClient, args: argparse.Namespace, session: Session) -> int:
    run = await client.cancel(args.run_id, args.reason)
    return show(message_to_dict(run), output.run_table(run), args.json)


async def cmd_list(client: AsyncGenerationClient, args: argparse.Namespace, session: Session) -> int:
    statuses = [pb.RunStatus.Value(f"RUN_STATUS_{s.upper()}") for s in args.status]
    found: list[pb.Run] = []
    async for run in client.runs(statuses):
        if len(found) == args.limit:
            break
        found.append(run)
    return show([message_to_dict(r) for r in found], output.runs_table(found), args.json)


async def cmd_templates(client: AsyncGenerationClient, args: argparse.Namespace, session: Session) -> int:
    templates = await client.templates()
    return show([message_to_dict(t) for t in templates], output.templates_table(templates), args.json)


async def cmd_describe(client: AsyncGenerationClient, args: argparse.Namespace, session: Session) -> int:
    template = await client.describe(args.name)
    return show(message_to_dict(template), output.template_table(template), args.json)


async def cmd_backends(client: AsyncGenerationClient, args: argparse.Namespace, session: Session) -> int:
    backends = await client.backends()
    return show([message_to_dict(b) for b in backends], output.backends_table(backends), args.json)


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
        help="HOST[:PORT] of the service (port 50051 when left out), or dns:///NAME:PORT to spread calls over "
        "every address of NAME (env GENCTL_SERVER; default 127.0.0.1:50051)",
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
    parser.add_argument(
        "--tls-cert", type=Path, default=default(None), help="client certificate chain PEM, for mutual TLS"
    )
    parser.add_argument("--tls-key", type=Path, default=default(None), help="client private key PEM, for mutual TLS")
    parser.add_argument(
        "--wait-for-ready",
        action="store_true",
        default=default(False),
        help="wait for the service to be reachable (one just started) instead of failing with UNAVAILABLE",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="genctl", description="Client of the generation service.")
    top.add_argument(
        "--version", action="version", version=f"genctl {importlib.metadata.version('comfy-generation-client')}"
    )
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
    get = commands.add_parser("get", help="print a run", parents=[common])
    get.add_argument("run_id")
    get.add_argument("--json", action="store_true", help="print it as JSON")
    cancel = commands.add_parser("cancel", help="cancel a run (idempotent)", parents=[common])
    cancel.add_argument("run_id")
    cancel.add_argument("--reason", default="", help="recorded in the run's cancelled event")
    cancel.add_argument("--json", action="store_true", help="print the run as JSON")
    runs = commands.add_parser("list", help="print runs, newest first", parents=[common])
    runs.add_argument(
        "--status",
        action="append",
        default=[],
        choices=["accepted", "queued", "running", "completed", "failed", "cancelled"],
    )
    runs.add_argument("--limit", type=int, default=50, help="at most this many runs (default %(default)s)")
    runs.add_argument("--json", action="store_true", help="print them as JSON")
    templates = commands.add_parser("templates", help="list the templates in service", parents=[common])
    templates.add_argument("--json", action="store_true", help="print them as JSON, with parameters")
    describe = commands.add_parser("describe", help="print a template's parameters", parents=[common])
    describe.add_argument("name")
    describe.add_argument("--json", action="store_true", help="print it as JSON")
    backends = commands.add_parser("backends", help="list the service's backends and their state", parents=[common])
    backends.add_argument("--json", action="store_true", help="print them as JSON")
    return top


def target(server: str) -> str:
    """The gRPC target: HOST:PORT, with the default port when only a host is given (gRPC would dial 443)."""
    if "://" in server or server.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        return server
    host, sep, port = server.rpartition(":")
    if not sep or host.endswith(":") or (server.startswith("[") and server.endswith("]")):  # no port; [::1]
        return f"{server}:{DEFAULT_PORT}"
    if not port.isdigit():
        raise UsageError(f"--server {server!r}: the port must be a number")
    return server


def client_cert(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together (mutual TLS)")
    return (args.tls_key.read_bytes(), args.tls_cert.read_bytes()) if args.tls_cert else None


def fail(message: str, code: int) -> int:
    print(f"genctl: {message}", file=sys.stderr)
    return code


async def amain(args: argparse.Namespace, session: Session) -> int:
    try:
        ca_pem = args.tls_ca.read_bytes() if args.tls_ca else None
        cert = client_cert(args)
        server = target(args.server)
    except (UsageError, OSError) as exc:
        return fail(str(exc), EXIT_USAGE)
    async with AsyncGenerationClient(
        server, token=args.token, tls=args.tls, ca_pem=ca_pem, client_cert=cert, wait_for_ready=args.wait_for_ready
    ) as client:
        try:
            return await COMMANDS[args.command](client, args, session)
        except GenerationClientError as exc:
            print(f"genctl: {exc.code.name}: {' '.join(exc.message.split())}", file=sys.stderr)
            for field, problem in exc.violations.items():
                print(f"  {field}: {problem}", file=sys.stderr)
            return EXIT_CODES.get(exc.code, EXIT_REFUSED)
        except (UsageError, ValueError) as exc:
            return fail(str(exc), EXIT_USAGE)
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task, then raises KeyboardInterrupt
            if session.run_id and not session.detach:
                # Cancelled here and waited for, so that "cancelled" is true when genctl says it.
                await client.cancel(session.run_id, "genctl was interrupted (Ctrl-C)")
            raise


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    session = Session()
    try:
        code = asyncio.run(amain(args, session))
        sys.stdout.flush()
    except KeyboardInterrupt:
        if session.run_id:
            left = "left running (watch it with genctl watch)" if session.detach else "cancelled"
            print(f"genctl: interrupted; run {session.run_id} {left}", file=sys.stderr)
        else:
            print("genctl: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (genctl ... | head): nothing more to say. Point stdout at /dev/null so
        # that the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_COMPLETED
    sys.exit(code)


if __name__ == "__main__":
    main()
