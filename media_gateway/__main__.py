"""``python -m media_gateway``: serve run storage outputs over HTTP (flags override MEDIA_GATEWAY_* variables)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from comfy_generation import logformat
from media_gateway.app import check_runs_dir
from media_gateway.serve import serve_forever, serve_workers
from media_gateway.settings import LOG_FORMATS, LOG_LEVELS, SERVERS, Settings, SettingsError, env_name, flag_name

_HELP = {
    "runs_dir": "run storage root, one <run_id>/ folder per run (default: ./exports/json)",
    "listen": "HOST:PORT to bind, [::1]:PORT for IPv6 (default: 127.0.0.1:8080)",
    "log_level": f"one of {', '.join(LOG_LEVELS)} (default: info)",
    "cors_origins": "comma-separated browser origins allowed by CORS, or * (default: none, CORS off)",
    "server": f"ASGI server, one of {', '.join(SERVERS)} (default: granian)",
    "accel_redirect": "front-server mode: nginx internal location aliasing the runs dir, e.g. /_runs/; "
    "media bodies are then sent by nginx via X-Accel-Redirect (default: empty, off)",
    "log_format": f"log lines as {' or '.join(LOG_FORMATS)} (one JSON object per line, for collectors) (default: text)",
    "signing_secret": "HMAC secret shared with the generation service (its GENERATION_MEDIA_SIGNING_SECRET); "
    "when set, media, info and run-page URLs need valid expires and sig parameters, and the URLs the gateway "
    "emits are signed. Set it through the environment, not the command line (default: empty, off)",
    "signed_url_ttl_seconds": "how long the media URLs emitted by the info endpoint and the run page stay "
    "valid, in seconds (default: 86400)",
    "workers": "granian worker processes sharing the listening socket (default: 0, one per core)",
}
_METAVARS = {
    "runs_dir": "DIR",
    "listen": "HOST:PORT",
    "log_level": "LEVEL",
    "cors_origins": "ORIGINS",
    "server": "NAME",
    "accel_redirect": "PATH",
    "log_format": "FORMAT",
    "signing_secret": "SECRET",
    "signed_url_ttl_seconds": "SECONDS",
    "workers": "N",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m media_gateway",
        description="Serve generated images, audio and video from run storage over HTTP. "
        "Every flag can also be set with the environment variable shown; a flag wins over its variable. "
        "Endpoints: /api/media/..., /runs/<run_id>, /healthz (alive), /readyz (run storage readable), "
        "/metrics (Prometheus).",
    )
    for name, text in _HELP.items():
        parser.add_argument(flag_name(name), dest=name, metavar=_METAVARS[name], help=f"{text} [env: {env_name(name)}]")
    return parser


def merged_environment(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment with the parsed command-line flags laid over it (what worker processes read)."""
    merged = dict(environ)
    for name in _HELP:
        value = getattr(args, name)
        if value is not None:
            merged[env_name(name)] = value
    return merged


def load_settings(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from the environment with the parsed command-line flags laid over it."""
    return Settings.from_env(merged_environment(args, environ))


RUNS_DIR_POLL_S = 0.5


def wait_for_runs_dir(runs_dir: Path, poll_s: float = RUNS_DIR_POLL_S) -> None:
    """Return once ``runs_dir`` exists: the generation service creates it when it starts, which may be after
    the gateway. Anything found there that is not a usable directory is check_runs_dir's error."""
    if os.path.lexists(runs_dir):
        return
    log = logging.getLogger("media_gateway")
    log.warning("runs dir %r does not exist yet: waiting for it (the generation service creates it)", str(runs_dir))
    while not os.path.lexists(runs_dir):
        time.sleep(poll_s)
    log.info("runs dir %r appeared: starting", str(runs_dir))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        parser.error(str(exc))  # usage + message on stderr, exit status 2
    logformat.configure(settings.log_level, settings.log_format)  # stderr; the server's access log included
    try:
        wait_for_runs_dir(settings.runs_dir)
        check_runs_dir(settings.runs_dir)
        if settings.worker_count > 1:
            os.environ.update(merged_environment(args))  # each worker reads its settings from there
            serve_workers(settings)
        else:
            asyncio.run(serve_forever(settings))
    except RuntimeError as exc:
        logging.getLogger("media_gateway").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
