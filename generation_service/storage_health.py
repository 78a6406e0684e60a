"""Whether run storage can be written: set by the writes that fail, cleared by a probe that succeeds.

A full disk (or a read-only or vanished volume) is noticed by the first write that fails; from then on the
service reports NOT_SERVING, refuses new runs with UNAVAILABLE, and probes every ``probe_s`` with a small
real write until one succeeds, which wakes the runs waiting to record what they could not write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from comfy_generation.runstore import PARTIAL_SUFFIX

logger = logging.getLogger(__name__)

PROBE_BYTES = 64 * 1024  # a write of real blocks: an empty file can be created on a full disk


def describe_storage_error(exc: OSError, what: str) -> str:
    """A message for callers: full disks say so; other errors name the OS's reason, never a path."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"run storage is full ({os.strerror(exc.errno)}) while {what}; free space on the runs volume"
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    return f"run storage cannot be written ({reason}) while {what}"


class StorageHealth:
    """Shared by every writer of the process."""

    def __init__(self, root: Path, probe_s: float = 1.0) -> None:
        self.root = root
        self.probe_s = probe_s
        self.problem = ""  # why storage is failing; empty while it works
        self._recovered = asyncio.Event()
        self._recovered.set()
        self.on_change: Callable[[bool], None] = lambda ok: None

    @property
    def ok(self) -> bool:
        return not self.problem

    def failed(self, exc: OSError, what: str) -> str:
        """Record a failed write; returns the message to report."""
        message = describe_storage_error(exc, what)
        if self.ok:
            logger.error("%s", message)
            self._recovered.clear()
            self.problem = message
            self.on_change(False)
        return message

    async def wait_writable(self) -> None:
        await self._recovered.wait()

    def _probe(self) -> None:
        path = self.root / f".storage-probe{PARTIAL_SUFFIX}"
        try:
            with open(path, "wb") as fh:
                fh.write(b"\0" * PROBE_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    async def _probe_while_failing(self) -> None:
        while True:
            await asyncio.sleep(self.probe_s)
            if self.ok:
                continue
            try:
                await asyncio.to_thread(self._probe)
            except OSError as exc:
                logger.debug("run storage still not writable: %r", exc)
                continue
            logger.warning("run storage is writable again")
            self.problem = ""
            self._recovered.set()
            self.on_change(True)

    @contextlib.asynccontextmanager
    async def probing(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._probe_while_failing(), name="storage-probe")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
