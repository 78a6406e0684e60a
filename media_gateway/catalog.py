"""Read side of run storage: cached run records and output lookup by kind and index.

Everything here blocks on the filesystem; the app calls it through ``anyio.to_thread.run_sync``.
Run ids reaching this module have already passed ``runstore.parse_run_id``; file paths come only from
``metadata.json`` entities through ``RunStore.entity_path``.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_generation.runstore import (
    UNKNOWN_FORMAT,
    DamagedRecord,
    MediaFormat,
    MediaKind,
    OutputMeta,
    RunMissing,
    RunRecord,
    RunStore,
    format_for_extension,
)
from media_gateway.probe import probe

logger = logging.getLogger(__name__)

# The kinds the gateway serves (``file`` outputs are kept in run storage but are not media).
SERVED_KINDS = (MediaKind.IMAGE, MediaKind.AUDIO, MediaKind.VIDEO, MediaKind.MODEL)

_StatKey = tuple[int, int, int]
UrlFor = Callable[[MediaKind, str, int], str]  # (kind, run_id, index) -> the output's URL


class OutputNotFound(LookupError):
    """The run, or the requested output of it, does not exist; the message is safe to show to clients."""


class RecordDamaged(LookupError):
    """The run's record cannot be read as one; the message (naming the field) is safe to show to clients."""


@dataclass(frozen=True)
class ResolvedOutput:
    """One servable output file, checked to lie inside its run folder."""

    run_id: str
    kind: MediaKind
    index: int
    path: Path
    stat: os.stat_result
    media_format: MediaFormat
    ext: str  # the stored file's extension, lowercase, without the dot


@dataclass(frozen=True)
class _Entry:
    key: _StatKey
    record: RunRecord | DamagedRecord


def _stat_key(st: os.stat_result) -> _StatKey:
    # metadata.json is replaced by os.replace on every write, so the inode changes even when a rewrite
    # lands within the same mtime tick with the same size.
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class RunCatalog:
    """Run records by run id, re-read only when ``metadata.json`` has changed on disk."""

    def __init__(self, store: RunStore, max_cached: int = 1024) -> None:
        self.store = store
        self.max_cached = max_cached
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # lookups run on several worker threads at once
        self.loads = 0  # how many times a record was read and parsed (for tests and debugging)
        self._facts: OrderedDict[tuple[Path, _StatKey], dict[str, Any]] = OrderedDict()

    def record(self, run_id: str) -> RunRecord:
        """The run's record (cached until metadata.json changes). Raises OutputNotFound when the run does
        not exist, RecordDamaged when its record is not one the service could have written."""
        path = self.store.metadata_path(run_id)
        try:
            if stat.S_ISLNK(os.lstat(path.parent).st_mode):  # a cached record must not outlive such a swap
                raise FileNotFoundError(path.parent)
            key = _stat_key(os.stat(path))
        except (FileNotFoundError, NotADirectoryError):
            with self._lock:
                self._cache.pop(run_id, None)
            raise OutputNotFound(f"run {run_id} not found") from None
        with self._lock:
            entry = self._cache.get(run_id)
            if entry is not None and entry.key == key:
                self._cache.move_to_end(run_id)
            else:
                entry = None
        if entry is None:
            entry = self._load(run_id, key)
            with self._lock:
                self._cache[run_id] = entry
                self._cache.move_to_end(run_id)
                while len(self._cache) > self.max_cached:
                    self._cache.popitem(last=False)
        if isinstance(entry.record, DamagedRecord):
            raise RecordDamaged(str(entry.record))
        return entry.record

    def _load(self, run_id: str, key: _StatKey) -> _Entry:
        try:
            record: RunRecord | DamagedRecord = self.store.read_record(run_id)
            with self._lock:
                self.loads += 1
        except RunMissing:
            raise OutputNotFound(f"run {run_id} not found") from None
        except DamagedRecord as exc:
            logger.warning("damaged run record: %s", exc)
            record = exc
        # Keyed by the stat seen before reading: a record replaced meanwhile is read again next time.
        return _Entry(key, record)

    def find_output(self, run_id: str, kind: MediaKind, index: int | None) -> ResolvedOutput:
        """The ``index``-th output of ``kind`` (0-based, sequence order), or the latest when index is None."""
        outputs = self.record(run_id).outputs(kind)
        if not outputs:
            raise OutputNotFound(f"run {run_id} has no {kind.value} output")
        if index is None:
            index = len(outputs) - 1
        elif index >= len(outputs):
            valid = "0" if len(outputs) == 1 else f"0-{len(outputs) - 1}"
            raise OutputNotFound(
                f"run {run_id} has {len(outputs)} {kind.value} output(s); index {index} is out of range ({valid})"
            )
        entity = outputs[index]
        path = self.store.entity_path(run_id, entity)
        try:
            stat = os.stat(path) if path is not None else None
        except FileNotFoundError:  # removed since entity_path looked
            stat = None
        if path is None or stat is None:
            logger.warning("run %s: %s output %d has no servable file %r", run_id, kind, index, entity.filename)
            raise OutputNotFound(f"run {run_id}: {kind.value} output {index} is not available")
        ext = path.suffix.lower().lstrip(".")
        return ResolvedOutput(run_id, kind, index, path, stat, format_for_extension(ext) or UNKNOWN_FORMAT, ext)

    def describe(self, run_id: str, url_for: UrlFor) -> dict[str, Any]:
        """The info document: the run's status and every servable output with its gateway URL.

        Indexes count every output of a kind, as ``find_output`` does, so a listed URL always serves that file.
        """
        record = self.record(run_id)
        counters: dict[MediaKind, int] = {}
        outputs: list[dict[str, Any]] = []
        for entity in record.outputs():
            kind, meta = entity.kind, entity.metadata
            if kind not in SERVED_KINDS or not isinstance(meta, OutputMeta):
                continue
            index = counters.get(kind, 0)
            counters[kind] = index + 1
            path = self.store.entity_path(run_id, entity)
            if path is None:
                continue  # not servable (missing or tampered): keep the index count, do not advertise it
            media_format = format_for_extension(Path(entity.filename).suffix)
            outputs.append(
                {
                    "type": kind.value,
                    "index": index,
                    "url": url_for(kind, run_id, index),
                    "mime": media_format.mime if media_format is not None else meta.mime,
                    "size_bytes": meta.size_bytes,
                    "sha256": meta.sha256,
                    "node_id": meta.node_id,
                    "filename": entity.filename,
                    **self.facts(path),
                }
            )
        return {"run_id": run_id, "status": record.status.value, "outputs": outputs}

    def facts(self, path: Path) -> dict[str, Any]:
        """``probe(path)``, cached until the file changes (outputs never do, so this reads each file once)."""
        try:
            key = (path, _stat_key(os.stat(path)))
        except FileNotFoundError:
            return {}
        with self._lock:
            cached = self._facts.get(key)
        if cached is None:
            cached = probe(path)
            with self._lock:
                self._facts[key] = cached
                while len(self._facts) > 8 * self.max_cached:
                    self._facts.popitem(last=False)
        return cached
