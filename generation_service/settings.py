"""Settings of the generation service: one frozen dataclass, from flags and GENERATION_* variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

ENV_PREFIX = "GENERATION_"
# The workflow templates installed with the package (package data of the wheel): the default template
# folder, found wherever the service is installed and whatever its working directory.
SHIPPED_TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

HELP = {
    "backend_url": "ComfyUI base URL, or a comma-separated list of them (a pool): "
    "http://swarm:7801/ComfyBackendDirect (through SwarmUI) or http://comfy:8188",
    "backends_file": "TOML file describing the pool's backends one by one ([[backend]] name, url, and optionally "
    "swarm_backend_id, weight, max_queued, labels); replaces backend_url",
    "swarm_url": "SwarmUI base URL (http://swarm:7801): its ComfyUI backends, listed through its API, become "
    "the pool (each pinned with X-Swarm-Backend-ID) and are followed as they change; replaces backend_url",
    "swarm_authorization": "Authorization header value SwarmUI requires, sent on every request to it (set it "
    "through the environment)",
    "swarm_token": "swarm_token cookie of the SwarmUI account the service acts as (set it through the environment)",
    "swarm_refresh_seconds": "how often SwarmUI's backend list is read again",
    "backend_down_seconds": "how long a backend may answer neither its probe nor its websocket before its queued "
    "runs move to another backend and its executing runs fail (or retry, when the request allows it)",
    "swarm_backend_id": "pin one SwarmUI backend: sent as X-Swarm-Backend-ID on every request, websocket included",
    "runs_dir": "run storage root, shared with the media gateway",
    "listen": "HOST:PORT the gRPC server binds (port 0: a free port)",
    "media_base_url": "public base URL of the media gateway; output URLs are built on it",
    "history_poll_seconds": "how often /history is polled for a run while the backend websocket is down",
    "lost_prompt_grace_seconds": "how long a prompt may be found neither queued nor in the backend's history "
    "(slow proxies write history late) before its run fails as lost",
    "request_timeout_seconds": "timeout of one backend HTTP request (for downloads: of each read)",
    "shutdown_grace_seconds": "on SIGTERM, how long running calls get to finish before they are cut off",
    "queue_timeout_seconds": "default longest wait in the backend's queue before a run fails (per-request override)",
    "execution_timeout_seconds": "default longest execution time before a run fails (per-request override)",
    "keepalive_seconds": "while a run is queued, how often a 'queued' event with its position is sent",
    "cancel_confirm_seconds": "how long a cancel waits for the backend to confirm before the run ends anyway",
    "max_runs_in_flight": "runs accepted but not finished, at most; beyond it calls get RESOURCE_EXHAUSTED",
    "backend_retries": "retries of a backend request that found no connection or a 5xx answer",
    "health_check_seconds": "how often the backend is probed; gRPC health is SERVING only while it answers",
    "metrics_listen": "HOST:PORT of the Prometheus /metrics endpoint; empty: no endpoint",
    "log_format": "log lines as 'text' (for people) or 'json' (one object per line, for collectors)",
    "auth_tokens": "comma-separated bearer tokens; when set, every call but health checks must send "
    "'authorization: Bearer <token>' (set it through the environment, not the command line)",
    "tls_cert_file": "PEM certificate chain: serve gRPC over TLS (with tls_key_file)",
    "tls_key_file": "PEM private key of tls_cert_file",
    "tls_client_ca_file": "PEM CA bundle: also require client certificates signed by it (mutual TLS)",
    "media_signing_secret": "HMAC secret shared with the gateway: output URLs are signed and expire "
    "(set it through the environment)",
    "media_url_ttl_seconds": "how long a signed output URL stays valid",
    "media_urls": "'gateway' (/api/media/... URLs) or 'files' (with a signing secret: file URLs that nginx "
    "serves and checks itself, see deploy/nginx/media-gateway.conf)",
    "templates_dir": "folder of workflow templates (checked at start-up, reloaded on change); empty: none",
    "max_input_media_bytes": "largest input media file a template request may carry",
    "log_level": "logging level: DEBUG, INFO, WARNING or ERROR",
    "redis_url": "replica mode: redis:// or rediss:// URL (with its password) of the Redis that several replicas "
    "sharing one runs_dir use; empty: one process, run storage only (set it through the environment)",
    "redis_prefix": "prefix of every Redis key of this service (several services can share one Redis)",
    "replica_name": "this replica's name in Redis (its consumer name); empty: host name and a random suffix",
    "takeover_seconds": "replica mode: how soon the runs of a replica that stopped answering are taken over",
    "redis_retention_seconds": "replica mode: how long a finished run's events and record stay in Redis "
    "(run storage keeps them for good)",
}

# How --help shows a default that is not meant to be read as a value (an install-dependent path).
DEFAULT_SHOWN = {"templates_dir": "the templates shipped with the package"}
# Settings that hold secrets: --help never prints their value, set or not.
SECRETS = frozenset({"auth_tokens", "media_signing_secret", "swarm_authorization", "swarm_token", "redis_url"})

_CONVERTERS: dict[str, Callable[[str], object]] = {"float": float, "int": int, "Path": Path}


@dataclass(frozen=True)
class Settings:
    """Every setting, with safe local defaults (see HELP). Each is also a flag (--backend-url) and an
    environment variable (GENERATION_BACKEND_URL); flags win over the environment."""

    backend_url: str = "http://127.0.0.1:8188"
    swarm_backend_id: str = ""
    backends_file: str = ""
    swarm_url: str = ""
    swarm_authorization: str = ""
    swarm_token: str = ""
    swarm_refresh_seconds: float = 10.0
    backend_down_seconds: float = 30.0
    runs_dir: Path = Path("exports/json")
    listen: str = "127.0.0.1:50051"
    media_base_url: str = "http://127.0.0.1:8080"
    history_poll_seconds: float = 1.0
    request_timeout_seconds: float = 30.0
    lost_prompt_grace_seconds: float = 60.0
    shutdown_grace_seconds: float = 10.0
    queue_timeout_seconds: float = 3600.0
    execution_timeout_seconds: float = 3600.0
    keepalive_seconds: float = 10.0
    cancel_confirm_seconds: float = 30.0
    max_runs_in_flight: int = 1000
    backend_retries: int = 3
    health_check_seconds: float = 5.0
    metrics_listen: str = ""
    log_format: str = "text"
    auth_tokens: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    media_signing_secret: str = ""
    media_url_ttl_seconds: float = 86400.0
    media_urls: str = "gateway"
    templates_dir: str = str(SHIPPED_TEMPLATES_DIR)
    max_input_media_bytes: int = 50 * 1024 * 1024
    log_level: str = "INFO"
    redis_url: str = ""
    redis_prefix: str = "generation"
    replica_name: str = ""
    takeover_seconds: float = 15.0
    redis_retention_seconds: float = 86400.0

    def __post_init__(self) -> None:
        self._check_addresses()
        self._check_numbers()
        self._check_security()
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format: must be text or json, got {self.log_format!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level: must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")

    def _check_addresses(self) -> None:
        urls = [("backend_url", u.strip()) for u in self.backend_url.split(",")] + [
            ("media_base_url", self.media_base_url)
        ]
        for name, value in urls:
            url = urlsplit(value)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(
                    f"{name}: must be an http(s) URL (or, for backend_url, a comma-separated list), got {value!r}"
                )
        if self.backends_file and not Path(self.backends_file).is_file():
            raise ValueError(f"backends_file: no such file: {self.backends_file}")
        if not _is_host_port(self.listen):
            raise ValueError(f"listen: must be HOST:PORT, got {self.listen!r}")
        if self.redis_url and urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("redis_url: must be a redis://, rediss:// or unix:// URL")
        if not self.redis_prefix or any(c.isspace() for c in self.redis_prefix):
            raise ValueError(f"redis_prefix: must be a word without spaces, got {self.redis_prefix!r}")
        if self.metrics_listen and not _is_host_port(self.metrics_listen):
            raise ValueError(f"metrics_listen: must be HOST:PORT or empty, got {self.metrics_listen!r}")

    def _check_numbers(self) -> None:
        for f in fields(self):
            positive = f.name.endswith("_seconds") or f.name in ("max_runs_in_flight", "max_input_media_bytes")
            if positive and not getattr(self, f.name) > 0:
                raise ValueError(f"{f.name}: must be greater than 0, got {getattr(self, f.name)!r}")
        if self.backend_retries < 0:
            raise ValueError(f"backend_retries: must be 0 or more, got {self.backend_retries!r}")

    def _check_security(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file: tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("tls_client_ca_file: client certificates need TLS (tls_cert_file and tls_key_file)")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        if self.media_urls not in ("gateway", "files"):
            raise ValueError(f"media_urls: must be 'gateway' or 'files', got {self.media_urls!r}")
        if self.auth_tokens and not all(t.strip() for t in self.auth_tokens.split(",")):
            raise ValueError("auth_tokens: an empty token in the list")

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.auth_tokens.split(",") if t.strip())

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> Settings:
        """Flags over GENERATION_* environment variables over defaults. An invalid value exits with a
        message naming the flag and the variable."""
        parser = argparse.ArgumentParser(
            prog="python -m generation_service",
            description="gRPC service that runs ComfyUI workflows and streams their progress.",
        )
        for f in fields(cls):
            env = ENV_PREFIX + f.name.upper()
            default = environ.get(env, str(f.default))
            shown = DEFAULT_SHOWN.get(f.name, "%(default)s") if default == str(f.default) else "%(default)s"
            if f.name in SECRETS:
                shown = "set" if default else "empty"
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                default=default,
                metavar=f.name.upper(),
                help=f"{HELP[f.name]} (env {env}; default {shown})",
            )
        ns = parser.parse_args(argv)
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = getattr(ns, f.name)
            flag = f"--{f.name.replace('_', '-')} / {ENV_PREFIX}{f.name.upper()}"
            try:
                values[f.name] = _CONVERTERS.get(str(f.type), str)(raw)
            except ValueError:
                parser.error(f"{flag}: not a {f.type}: {raw!r}")
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as exc:
            name = str(exc).split(":", 1)[0]
            parser.error(
                f"--{name.replace('_', '-')} / {ENV_PREFIX}{name.upper()}: {str(exc).split(':', 1)[1].strip()}"
            )


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) <= 65535)
