"""The typed keyword options of generate, submit and run (checked by type checkers, and at run time:
an unknown name is a TypeError)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict


class RunOptions(TypedDict, total=False):
    name: str
    """A short workflow name recorded with the run (default: a Path workflow's file name)."""
    request_id: str
    """Makes retries safe: a request with an id the service has seen returns that run."""
    include_previews: bool
    """Also store temporary preview outputs."""
    queue_timeout: float
    """Longest wait in the backend's queue, in seconds (default: the service's)."""
    execution_timeout: float
    """Longest execution, in seconds (default: the service's)."""
    retry_on_backend_loss: bool
    """Start over once on another backend when the run's backend dies mid-execution."""
    backend_labels: Iterable[str]
    """Only backends carrying every one of these labels may run it."""
