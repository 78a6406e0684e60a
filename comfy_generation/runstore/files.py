"""Atomic files: written beside their final place, fsynced, renamed into place; never seen torn."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson

PARTIAL_SUFFIX = ".partial"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartialFile:
    """A file being written beside its final place, invisible to readers until ``commit``.

    The temp name starts with a dot and ends in ``.partial``; ``commit`` renames it to its final name
    (chosen only then, e.g. once the content's format is known). A durable commit also fsyncs the data
    before and the folder after, so the file survives a machine crash; a reader never sees a torn file
    either way. ``discard`` (or leaving the ``with`` block without committing) removes it.
    """

    def __init__(self, directory: Path, hint: str = "file") -> None:
        fd, name = tempfile.mkstemp(prefix=f".{hint}.", suffix=PARTIAL_SUFFIX, dir=directory)
        self.path = Path(name)
        self.file: IO[bytes] = os.fdopen(fd, "wb")

    def commit(self, final: Path, durable: bool = True) -> None:
        self.file.flush()
        if durable:
            os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.path, 0o644)  # mkstemp makes 0600; the gateway may run as another user
        os.replace(self.path, final)
        if durable:
            fsync_dir(final.parent)

    def discard(self) -> None:
        """Remove the temp file. Closing may fail (a full disk refuses the buffered tail): the file is
        removed all the same, then the error is raised."""
        try:
            self.file.close()
        finally:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the temp file unless it was committed; never raises (it runs while another error
        is on its way out, or after a commit)."""
        if not self.file.closed or self.path.exists():
            with contextlib.suppress(OSError):
                self.discard()


@contextmanager
def atomic_file(path: Path, durable: bool = True) -> Iterator[IO[bytes]]:
    """Open a temp file beside ``path``; on a clean exit it replaces ``path`` atomically.

    On an exception the temp file is removed and ``path`` is untouched, so a reader sees either the
    old file or the complete new one.
    """
    with PartialFile(path.parent, path.name) as partial:
        yield partial.file
        partial.commit(path, durable)


def metadata_text(data: Any) -> str:
    """How run storage writes JSON (indented, UTF-8 as is). orjson writes the same text as the standard
    library's ``json.dumps(data, indent=2, ensure_ascii=False)`` some thirty times faster; it refuses
    integers past 64 bits, which the standard library then writes."""
    try:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONEncodeError:
        return json.dumps(data, indent=2, ensure_ascii=False)


def compact_text(data: Any) -> str:
    """One line of JSON (a journal line): dataclasses in ``data`` are written as objects of their
    fields, as ``dataclasses.asdict`` gives them."""
    try:
        return orjson.dumps(data).decode()
    except orjson.JSONEncodeError:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=dataclasses.asdict)


def write_text_atomic(path: Path, text: str, durable: bool = True) -> None:
    with atomic_file(path, durable) as fh:
        fh.write(text.encode())


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    write_text_atomic(path, metadata_text(data), durable)
