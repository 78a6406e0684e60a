"""Output URLs: the gateway path of an output, and HMAC signatures that expire.

``output_url`` is the one function that mints an output's URL; the service and the gateway both call it.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from comfy_generation.runstore.formats import MediaKind


def media_url(base_url: str, kind: MediaKind, run_id: str, index: int) -> str:
    """The gateway URL of a run's ``index``-th output of ``kind`` (0-based, in sequence order)."""
    return f"{base_url.rstrip('/')}/api/media/{kind.value}/{run_id}/{index}"


def output_url(base_url: str, kind: MediaKind, run_id: str, index: int, *, secret: str = "", expires: int = 0) -> str:
    """The URL of a run's ``index``-th output of ``kind``; with a secret, signed and valid until ``expires``
    (Unix seconds). The service and the gateway both mint output URLs here."""
    url = media_url(base_url, kind, run_id, index)
    return signed_media_url(url, secret, expires) if secret else url


def sign_media_path(path: str, secret: str, expires: int) -> str:
    """The signature of a gateway path valid until ``expires`` (Unix seconds): hex HMAC-SHA256."""
    return hmac.new(secret.encode(), f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_media_url(url: str, secret: str, expires: int) -> str:
    """``url`` with ``expires`` and ``sig`` query parameters that the gateway checks."""
    path = urlsplit(url).path
    return f"{url}?expires={expires}&sig={sign_media_path(path, secret, expires)}"


def signature_problem(path: str, expires: str | None, sig: str | None, secret: str, now: float) -> str | None:
    """Why a signed request is refused, or None when its signature is valid and unexpired."""
    if not expires or not sig:
        return "this URL needs a signature (expires and sig parameters)"
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:  # int() of "²" or 5000 digits raises
        return "the expires parameter is not a Unix time"
    if not hmac.compare_digest(sign_media_path(path, secret, int(expires)).encode(), sig.encode()):  # any text
        return "the signature does not match this URL"
    if int(expires) < now:
        return "this URL has expired"
    return None
