"""The owner's mark in a run folder: which replica may write the run.

Redis decides who owns a run (see ownership.py); the new owner then replaces this mark before writing
anything, and every writer checks, before each write, that the mark is still the one it made. So a
replica that was frozen or cut off while another took its runs over writes nothing more to them, even
while Redis is unreachable. The check and the write are two steps: a process frozen exactly between
them could still make one write, a window of microseconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from comfy_generation.runstore import RunStore, utc_now, write_text_atomic

OWNER_FILE = ".owner.json"


class Fence:
    """The mark this replica made in one run folder, and the check that it is still there."""

    def __init__(self, path: Path, made: os.stat_result) -> None:
        self.path = path
        self._made = (made.st_ino, made.st_dev, made.st_mtime_ns)

    @classmethod
    def raise_(cls, store: RunStore, run_id: str, replica: str) -> Fence:
        """Mark the run as this replica's (blocking: a worker thread). Each mark is a new file, so it
        differs from every earlier one."""
        path = store.run_dir(run_id) / OWNER_FILE
        write_text_atomic(path, json.dumps({"replica": replica, "since": utc_now()}), durable=True)
        return cls(path, os.stat(path))

    def held(self) -> bool:
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        return (now.st_ino, now.st_dev, now.st_mtime_ns) == self._made


def current_owner(store: RunStore, run_id: str) -> str:
    """The replica named by the run folder's mark ("" when there is none)."""
    try:
        return str(json.loads((store.run_dir(run_id) / OWNER_FILE).read_text()).get("replica", ""))
    except (OSError, ValueError, AttributeError):
        return ""
