"""Media gateway settings: one frozen dataclass, read from ``MEDIA_GATEWAY_*`` variables (flags override)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "MEDIA_GATEWAY_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
SERVERS = ("granian", "uvicorn")
LOG_FORMATS = ("text", "json")
_ORIGIN_RE = re.compile(r"^https?://[^/\s]+$")
_ACCEL_RE = re.compile(r"^/[A-Za-z0-9_./-]*/$")


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the variable and the flag."""


def env_name(name: str) -> str:
    """The environment variable of a setting: ``runs_dir`` -> ``MEDIA_GATEWAY_RUNS_DIR``."""
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    """The command-line flag of a setting: ``runs_dir`` -> ``--runs-dir``."""
    return "--" + name.replace("_", "-")


def _fail(name: str, problem: str) -> SettingsError:
    return SettingsError(f"invalid {env_name(name)} ({flag_name(name)}): {problem}")


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs; defaults are safe for local development."""

    runs_dir: Path = Path("./exports/json")
    """The run storage root: one ``<run_id>/`` folder per run (read only)."""
    listen: str = "127.0.0.1:8080"
    """``HOST:PORT`` to bind (``[::1]:8080`` for IPv6; port 0 picks a free port)."""
    log_level: str = "info"
    """One of critical, error, warning, info, debug."""
    cors_origins: tuple[str, ...] = field(default=())
    """Origins allowed to fetch media from a browser (``*`` for any); empty disables CORS."""
    server: str = "granian"
    """The ASGI server ``python -m media_gateway`` runs: granian (default, measured fastest) or uvicorn."""
    accel_redirect: str = ""
    """Front-server mode: the internal nginx location (``/_runs/``) under which run folders are aliased.
    When set, media bodies are handed to nginx with ``X-Accel-Redirect``; empty serves them directly."""
    log_format: str = "text"
    """``text`` (lines for people) or ``json`` (one object per line, for log collectors)."""
    signing_secret: str = field(default="", repr=False)
    """HMAC secret shared with the generation service. When set, every media, info and run-page request
    must carry valid ``expires`` and ``sig`` parameters, and the URLs the gateway emits are signed."""
    signed_url_ttl_seconds: int = 86400
    """How long the media URLs emitted by the info endpoint and the run page stay valid."""
    workers: int = 0
    """Granian worker processes sharing the listening socket; 0: one per core. uvicorn runs one."""

    def __post_init__(self) -> None:
        if not str(self.runs_dir):
            raise _fail("runs_dir", "must not be empty")
        _split_listen(self.listen)
        if self.log_level not in LOG_LEVELS:
            raise _fail("log_level", f"{self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        for origin in self.cors_origins:
            if origin != "*" and not _ORIGIN_RE.fullmatch(origin):
                raise _fail("cors_origins", f"{origin!r} is not '*' or an origin like https://example.com")
        if self.server not in SERVERS:
            raise _fail("server", f"{self.server!r} is not one of {', '.join(SERVERS)}")
        if self.accel_redirect and (not _ACCEL_RE.fullmatch(self.accel_redirect) or ".." in self.accel_redirect):
            raise _fail("accel_redirect", f"{self.accel_redirect!r} is not a location path like /_runs/")
        if self.log_format not in LOG_FORMATS:
            raise _fail("log_format", f"{self.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
        if self.signing_secret != self.signing_secret.strip():
            raise _fail("signing_secret", "starts or ends with whitespace (a stray newline?)")
        self._check_numbers()

    def _check_numbers(self) -> None:
        if not 0 <= self.workers <= 256:
            raise _fail("workers", f"{self.workers} is not between 0 (one per core) and 256")
        if not 0 < self.signed_url_ttl_seconds <= 10 * 365 * 86400:
            raise _fail("signed_url_ttl_seconds", f"{self.signed_url_ttl_seconds} is not between 1 and 315360000")

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Settings from ``MEDIA_GATEWAY_*`` variables; unset (or empty) variables keep their defaults."""

        def get(name: str) -> str | None:
            value = environ.get(env_name(name), "").strip()
            return value or None

        default = cls()
        ttl, workers = get("signed_url_ttl_seconds"), get("workers")
        if ttl is not None and not (ttl.isascii() and ttl.isdigit()):
            raise _fail("signed_url_ttl_seconds", f"{ttl!r} is not a whole number of seconds")
        if workers is not None and not (workers.isascii() and workers.isdigit()):
            raise _fail("workers", f"{workers!r} is not a whole number")
        values = {name: get(name) for name in ("runs_dir", "listen", "accel_redirect")}
        secret = environ.get(env_name("signing_secret"), "")  # not stripped: it must equal the service's byte for byte
        lowered = {name: get(name) for name in ("log_level", "server", "log_format")}
        cors = get("cors_origins")
        return cls(
            runs_dir=Path(values["runs_dir"]) if values["runs_dir"] is not None else default.runs_dir,
            listen=values["listen"] or default.listen,
            log_level=(lowered["log_level"] or default.log_level).lower(),
            cors_origins=parse_origins(cors) if cors is not None else default.cors_origins,
            server=(lowered["server"] or default.server).lower(),
            accel_redirect=values["accel_redirect"] or default.accel_redirect,
            log_format=(lowered["log_format"] or default.log_format).lower(),
            signing_secret=secret,
            signed_url_ttl_seconds=int(ttl) if ttl is not None else default.signed_url_ttl_seconds,
            workers=int(workers) if workers is not None else default.workers,
        )

    @property
    def worker_count(self) -> int:
        """How many processes serve: ``workers``, or one per core (granian only: uvicorn runs one)."""
        if self.server != "granian":
            return 1
        return self.workers or os.cpu_count() or 1


def parse_origins(text: str) -> tuple[str, ...]:
    """A comma-separated origin list as a tuple (blank items dropped)."""
    return tuple(o.strip() for o in text.split(",") if o.strip())


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not port_text.isascii():
        raise _fail("listen", f"{listen!r} is not HOST:PORT")
    port = int(port_text)
    if port > 65535:
        raise _fail("listen", f"{listen!r}: port {port} is out of range 0-65535")
    return host, port
