"""Container health check of the generation service: one gRPC health ``Check``; exit 0 only when SERVING.

The service reports SERVING only while its backend (SwarmUI or ComfyUI) answers. Health checks need no
bearer token. The check reads the service's own environment, so it follows its settings:

* ``GENERATION_LISTEN``: the port (the check dials 127.0.0.1);
* ``GENERATION_TLS_CERT_FILE``: when set, the check speaks TLS and trusts ``HEALTHCHECK_TLS_CA_FILE``
  (default: that certificate chain itself, right for a self-signed one) and expects the certificate to
  name ``HEALTHCHECK_TLS_SERVER_NAME`` (default ``localhost``; set it to a name the certificate carries);
* ``GENERATION_TLS_CLIENT_CA_FILE``: when set (mutual TLS), the check presents
  ``HEALTHCHECK_TLS_CLIENT_CERT_FILE`` and ``HEALTHCHECK_TLS_CLIENT_KEY_FILE``.

Copied into the image as /app/grpc_healthcheck.py; docker-compose.yml runs it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def channel_for(environ: Mapping[str, str]) -> grpc.Channel:
    port = environ.get("GENERATION_LISTEN", "127.0.0.1:50051").rpartition(":")[2]
    target = f"127.0.0.1:{port}"
    cert = environ.get("GENERATION_TLS_CERT_FILE", "")
    if not cert:
        return grpc.insecure_channel(target)
    key = cert_chain = None
    if environ.get("GENERATION_TLS_CLIENT_CA_FILE"):
        key = _read(environ["HEALTHCHECK_TLS_CLIENT_KEY_FILE"])
        cert_chain = _read(environ["HEALTHCHECK_TLS_CLIENT_CERT_FILE"])
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(environ.get("HEALTHCHECK_TLS_CA_FILE") or cert),
        private_key=key,
        certificate_chain=cert_chain,
    )
    name = environ.get("HEALTHCHECK_TLS_SERVER_NAME") or "localhost"
    return grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", name)])


def main(environ: Mapping[str, str] = os.environ) -> int:
    try:
        with channel_for(environ) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # the published stubs omit the stub's methods
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    except (grpc.RpcError, OSError, KeyError) as exc:
        print(f"unhealthy: {exc!r}", file=sys.stderr)
        return 1
    if status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
