"""Read side of run storage: cached run records and output lookup by kind and index.

Everything here blocks on the filesystem; the app calls it through ``anyio.to_thread.run_sync``.
Run ids reaching this module have already passed ``runstore.parse_run_id``; file paths come only from
``metadata.json`` entities through ``RunStore.entity_path``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_generation.runstore import (
    MAX_RECORD_BYTES,
    UNKNOWN_FORMAT,
    MediaFormat,
    MediaKind,
    RunStore,
    all_outputs,
    format_for_extension,
    media_url,
    open_run_file,
    output_entities,
)
from media_gateway.probe import probe

logger = logging.getLogger(__name__)

# The kinds the gateway serves (``file`` outputs are kept in run storage but are not media).
SERVED_KINDS = (MediaKind.IMAGE, MediaKind.AUDIO, MediaKind.VIDEO, MediaKind.MODEL)

_StatKey = tuple[int, int, int]


class OutputNotFound(LookupError):
    """The run, or the requested output of it, does not exist; the message is safe to show to clients."""


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
    metadata: dict[str, Any] | None


def _stat_key(st: os.stat_result) -> _StatKey:
    # metadata.json is replaced by os.replace on every write, so the inode changes even when a rewrite
    # lands within the same mtime tick with the same size.
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _clean(data: Any) -> dict[str, Any] | None:
    """The record with only well-formed entities kept, so that a tampered file cannot crash lookups."""
    if not isinstance(data, dict):
        return None
    entities = data.get("entities")
    kept: list[dict[str, Any]] = []
    for entity in entities if isinstance(entities, list) else []:
        if not isinstance(entity, dict):
            continue
        try:
            int(entity.get("sequence", 0))
        except (TypeError, ValueError):
            continue
        kept.append(entity)
    return {**data, "entities": kept}


class RunCatalog:
    """Run records by run id, re-read only when ``metadata.json`` has changed on disk."""

    def __init__(self, store: RunStore, max_cached: int = 1024) -> None:
        self.store = store
        self.max_cached = max_cached
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # lookups run on several worker threads at once
        self.loads = 0  # how many times a record was read and parsed (for tests and debugging)
        self._facts: OrderedDict[tuple[Path, _StatKey], dict[str, Any]] = OrderedDict()

    def metadata(self, run_id: str) -> dict[str, Any] | None:
        """The run's record (shared, do not mutate), or None when the run does not exist or is unreadable.

        Raises OutputNotFound naming the problem when the record is over ``MAX_RECORD_BYTES``."""
        path = self.store.metadata_path(run_id)
        try:
            key = _stat_key(os.stat(path))
        except (FileNotFoundError, NotADirectoryError):
            with self._lock:
                self._cache.pop(run_id, None)
            return None
        with self._lock:
            entry = self._cache.get(run_id)
            if entry is not None and entry.key == key:
                self._cache.move_to_end(run_id)
                return entry.metadata
        entry = self._load(path)
        if entry is None:
            return None
        with self._lock:
            self._cache[run_id] = entry
            self._cache.move_to_end(run_id)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return entry.metadata

    def _load(self, path: Path) -> _Entry | None:
        try:
            fd, st = open_run_file(path)  # never through a run folder or record swapped for a symlink
        except (FileNotFoundError, NotADirectoryError):
            return None
        with os.fdopen(fd, "rb") as fh:
            if st.st_size > MAX_RECORD_BYTES:  # refused unread: the service never writes one this large
                problem = f"its record is {st.st_size} bytes, over the {MAX_RECORD_BYTES >> 20} MiB limit"
                logger.warning("run %s: %s", path.parent.name, problem)
                raise OutputNotFound(f"run {path.parent.name}: {problem}")
            key = _stat_key(st)  # the key of the bytes we read, not of a later file
            raw = fh.read()
        with self._lock:
            self.loads += 1
        try:
            metadata = _clean(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError):
            metadata = None
        if metadata is None:
            logger.warning("unreadable run record %s", path)
        return _Entry(key, metadata)

    def require(self, run_id: str) -> dict[str, Any]:
        metadata = self.metadata(run_id)
        if metadata is None:
            raise OutputNotFound(f"run {run_id} not found")
        return metadata

    def find_output(self, run_id: str, kind: MediaKind, index: int | None) -> ResolvedOutput:
        """The ``index``-th output of ``kind`` (0-based, sequence order), or the latest when index is None."""
        outputs = output_entities(self.require(run_id), kind)
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
            logger.warning("run %s: %s output %d has no servable file %r", run_id, kind, index, entity.get("filename"))
            raise OutputNotFound(f"run {run_id}: {kind.value} output {index} is not available")
        ext = path.suffix.lower().lstrip(".")
        return ResolvedOutput(run_id, kind, index, path, stat, format_for_extension(ext) or UNKNOWN_FORMAT, ext)

    def describe(self, run_id: str) -> dict[str, Any]:
        """The info document: the run's status and every servable output with its gateway URL.

        Indexes count every output of a kind, as ``find_output`` does, so a listed URL always serves that file.
        """
        metadata = self.require(run_id)
        counters: dict[str, int] = {}
        outputs: list[dict[str, Any]] = []
        served = {kind.entity_type: kind for kind in SERVED_KINDS}
        for entity in all_outputs(metadata):
            kind = served.get(str(entity.get("type")))
            if kind is None:
                continue
            index = counters.get(kind, 0)
            counters[kind] = index + 1
            path = self.store.entity_path(run_id, entity)
            if path is None:
                continue  # not servable (missing or tampered): keep the index count, do not advertise it
            meta = entity.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            filename = str(entity.get("filename", ""))
            media_format = format_for_extension(Path(filename).suffix)
            outputs.append(
                {
                    "type": kind.value,
                    "index": index,
                    "url": media_url("", kind, run_id, index),
                    "mime": media_format.mime if media_format is not None else meta.get("mime", UNKNOWN_FORMAT.mime),
                    "size_bytes": meta.get("size_bytes"),
                    "sha256": meta.get("sha256"),
                    "node_id": meta.get("node_id"),
                    "filename": filename,
                    **self.facts(path),
                }
            )
        return {"run_id": run_id, "status": metadata.get("status"), "outputs": outputs}

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
