"""Where a run's files live, and reading them back.

Layout::

    <root>/<run_id>/metadata.json            the run record (record.py), replaced atomically on every change
    <root>/<run_id>/01_workflow.json         the workflow as submitted
    <root>/<run_id>/events.jsonl             the event journal (events.py), one line per event, append-only
    <root>/<run_id>/NN_<entity type>.<ext>   one file per output, NN = the entity's sequence number
    <root>/<run_id>/.staged.NN_...           an output downloaded but not yet published (never served)
    <root>/<run_id>/.*.partial               a file being written (never served, removed on failure)

Readers find files through the record's entities, never by name, and never build a path from URL text.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from comfy_generation.runstore.events import EVENTS_FILE, RunEvent
from comfy_generation.runstore.files import PARTIAL_SUFFIX, metadata_text
from comfy_generation.runstore.ids import InvalidRunId, parse_run_id
from comfy_generation.runstore.record import MAX_RECORD_BYTES, METADATA_FILE, Entity, RunRecord, entity_filename
from comfy_generation.runstore.schema import DamagedRecord, loads

WORKFLOW_FILE = entity_filename(1, "workflow", "json")
STAGED_PREFIX = ".staged."


class RunMissing(LookupError):
    """No run folder (or no record in it) for this run id."""


class RunStore:
    """Paths and reads of one run-storage root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def run_dir(self, run_id: str) -> Path:
        return self.root / parse_run_id(run_id)

    def metadata_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / METADATA_FILE

    def workflow_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / WORKFLOW_FILE

    def events_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / EVENTS_FILE

    def staged_path(self, run_id: str, filename: str) -> Path:
        return self.run_dir(run_id) / f"{STAGED_PREFIX}{filename}"

    def run_ids(self) -> Iterator[str]:
        """The id of every run folder (folders with other names are not runs and are skipped)."""
        for path in self.root.iterdir() if self.root.is_dir() else ():
            try:
                yield parse_run_id(path.name)
            except InvalidRunId:
                continue

    def leftovers(self, run_id: str) -> list[Path]:
        """Files a stopped writer left half-done (partial downloads and writes)."""
        return list(self.run_dir(run_id).glob(f".*{PARTIAL_SUFFIX}"))

    def read_record(self, run_id: str) -> RunRecord:
        """The run's record. Raises RunMissing, or DamagedRecord for a record that is not one of ours
        (too large, not JSON, a folder, a field of the wrong shape, a symlinked run folder)."""
        try:
            with self._open_in_run(run_id, METADATA_FILE) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > MAX_RECORD_BYTES:
                    raise DamagedRecord(run_id, METADATA_FILE, "", f"is larger than {MAX_RECORD_BYTES} bytes")
                raw = fh.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            raise RunMissing(f"no run {run_id}") from None
        return RunRecord.from_json(raw, run_id)

    def read_workflow(self, run_id: str) -> dict[str, object]:
        try:
            with self._open_in_run(run_id, WORKFLOW_FILE) as fh:
                data = loads(fh.read(), run_id, WORKFLOW_FILE)
        except FileNotFoundError:
            raise DamagedRecord(run_id, WORKFLOW_FILE, "", "is missing") from None
        if not isinstance(data, dict):
            raise DamagedRecord(run_id, WORKFLOW_FILE, "", "is not a JSON object")
        return data

    def read_events(self, run_id: str) -> list[RunEvent]:
        """Every complete event of the run's journal, in order; [] when it has none.

        A torn last line (the writer died mid-line) is ignored; any other bad line is damage.
        """
        try:
            with self._open_in_run(run_id, EVENTS_FILE) as fh:
                lines = fh.read().split(b"\n")
        except FileNotFoundError:
            return []
        complete, tail = lines[:-1], lines[-1]  # the text after the last newline is a torn line, or empty
        events = [RunEvent.from_json(run_id, line) for line in complete]
        for expected, event in enumerate(events, 1):
            if event.seq != expected:
                raise DamagedRecord(run_id, EVENTS_FILE, "seq", f"line {expected} has seq {event.seq}")
        del tail
        return events

    def read_new_events(self, run_id: str, offset: int) -> tuple[list[RunEvent], int]:
        """The complete events journaled from byte ``offset`` on, and the offset after the last of them (a
        line still being written waits for the next read): for following a journal as it grows."""
        try:
            with self._open_in_run(run_id, EVENTS_FILE) as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1
        return [RunEvent.from_json(run_id, line) for line in data[:end].split(b"\n")[:-1]], offset + end

    def _open_in_run(self, run_id: str, name: str) -> IO[bytes]:
        """Open a file of the run for reading, following no symlink: neither the run folder nor the file
        may be one (the service never makes one, so one is tampering)."""
        try:
            fd, _ = open_run_file(self.run_dir(run_id) / name)
        except FileNotFoundError:
            raise
        except NotARegularFile:
            raise DamagedRecord(run_id, name, "", "is not a regular file") from None
        except OSError as exc:
            raise DamagedRecord(run_id, name, "", f"cannot be opened ({exc.strerror})") from None
        return os.fdopen(fd, "rb")

    def entity_path(self, run_id: str, entity: Entity) -> Path | None:
        """The file of an entity, or None unless it is a regular file (not a symlink) in the run's folder."""
        run_dir = self.run_dir(run_id)
        path = run_dir / entity.filename  # the record's reader admits only plain NN_<type>.<ext> names
        try:
            if run_dir.is_symlink() or not stat.S_ISREG(os.lstat(path).st_mode):
                return None
        except OSError:
            return None
        return path


class NotARegularFile(OSError):
    """The path names a folder, a device or a pipe, not a file."""


def open_run_file(path: Path) -> tuple[int, os.stat_result]:
    """Open ``<root>/<run_id>/<name>`` for reading without following a symlink; return the fd and its fstat.

    The run folder is opened with O_NOFOLLOW | O_DIRECTORY and the file relative to it with O_NOFOLLOW, so a
    folder or file swapped for a symlink at any moment is refused, never read through; checks made on the
    path beforehand (``entity_path``) cannot promise that. Read only from the returned fd, and take sizes
    and dates from its stat. O_NONBLOCK keeps a FIFO from blocking the open. Raises FileNotFoundError when
    the folder or file is missing or a symlink (or the folder is not one), and NotARegularFile for anything
    but a plain file.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open(path.parent, flags | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # the run folder is a symlink, or not a folder
            raise FileNotFoundError(errno.ENOENT, "no such run folder", os.fspath(path)) from None
        raise
    try:
        fd = os.open(path.name, flags | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the file is a symlink
            raise FileNotFoundError(errno.ENOENT, "refusing a symlink", os.fspath(path)) from None
        raise
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotARegularFile(errno.EINVAL, "not a regular file", os.fspath(path))
    return fd, st


class JournalWriter:
    """The append side of a run's journal. Each line reaches the OS before the event is shown to anyone,
    so a watcher replaying it after a restart sees exactly what was streamed.

    Unbuffered: a failed write (a full disk) raises at once and leaves at most a torn last line, which
    the next writer of the file cuts off before appending.
    """

    def __init__(self, path: Path) -> None:
        _drop_torn_tail(path)
        self._file = path.open("ab", buffering=0)

    def append(self, event: RunEvent) -> None:
        # Not fsynced: a killed process loses nothing; a crashed machine may lose the tail, which the
        # run's record and the backend's history let recovery rebuild.
        line = memoryview((event.to_json() + "\n").encode())
        while line:
            line = line[self._file.write(line) or 0 :]

    def close(self) -> None:
        self._file.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut a partly written last line, so that appending after a crash keeps every line whole."""
    try:
        with path.open("rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def record_text(record: RunRecord) -> str:
    """How run storage writes a record (indented, UTF-8 as is)."""
    return metadata_text(record.to_json())
