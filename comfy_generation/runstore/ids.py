"""Run ids and timestamps as run storage writes them."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

_RUN_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class InvalidRunId(ValueError):
    """The text is not a canonical run id (a lowercase, hyphenated UUID)."""


def new_run_id() -> str:
    return str(uuid.uuid4())


def parse_run_id(text: str) -> str:
    """Return ``text`` if it is a canonical run id, else raise InvalidRunId. Call before any path work."""
    if not isinstance(text, str) or not _RUN_ID_RE.fullmatch(text):
        raise InvalidRunId("run id must be a lowercase hyphenated UUID")
    return text


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
