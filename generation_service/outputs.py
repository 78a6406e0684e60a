"""Downloading a run's outputs into run storage: streamed, hashed, named by their content, atomic."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_generation.runstore import SNIFF_BYTES, MediaFormat, PartialFile, detect_format, entity_filename
from generation_service.comfy_replies import FileRef, NodeOutput

_NUMERIC = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Download:
    """A file ComfyUI produced for a run, and the node that produced it."""

    node_id: str
    ref: FileRef


@dataclass(frozen=True)
class StoredFile:
    filename: str
    format: MediaFormat
    size_bytes: int
    sha256: str


def select_downloads(outputs: Iterable[NodeOutput], include_previews: bool) -> list[Download]:
    """The files to store, in a stable order: by node id (numerically), then as the node listed them.

    ComfyUI runs independent output nodes in a different order from one run to the next, so the
    order of ``executed`` events would make output indexes unstable.
    """
    ordered = sorted(outputs, key=lambda o: [int(p) if p.isdigit() else p for p in _NUMERIC.split(o.node_id)])
    return [
        Download(o.node_id, ref)
        for o in ordered
        for ref in o.files
        if ref.type == "output" or (include_previews and ref.type == "temp")
    ]


# Outputs up to this size are received whole, then written in one go: one thread hop instead of one
# per filesystem call, for the many small images a run makes. Larger ones are streamed as they come.
SMALL_FILE_BYTES = 1024 * 1024


def _hash_and_write(digest: Any, partial: PartialFile, chunk: bytes) -> None:
    digest.update(chunk)
    partial.file.write(chunk)


def _write_whole(run_dir: Path, chunks: list[bytes], digest: Any, final: Path) -> None:
    with PartialFile(run_dir, "download") as partial:
        for chunk in chunks:
            _hash_and_write(digest, partial, chunk)
        partial.commit(final)


async def store(
    chunks: AsyncIterator[bytes], run_dir: Path, sequence: int, backend_name: str, place: Callable[[str], Path]
) -> StoredFile:
    """Write the chunks to a hidden temp file in the run folder, then rename it to ``place(name)``, where
    ``name`` is ``NN_output_<kind>.<ext>`` with the kind decided from the content. Memory stays at
    SMALL_FILE_BYTES plus two chunks. Raises OSError when storage refuses the bytes (the temp file is
    removed)."""
    digest = hashlib.sha256()
    head = b""
    size = 0
    small: list[bytes] | None = []  # the chunks so far, while the file is small enough to keep whole
    # Every filesystem call runs on a worker thread: creating and fsyncing files can take milliseconds,
    # and the event loop is delivering other runs' progress meanwhile.
    partial: PartialFile | None = None
    writing: asyncio.Future[None] | None = None
    try:
        async for chunk in chunks:
            if len(head) < SNIFF_BYTES:
                head += chunk[: SNIFF_BYTES - len(head)]
            size += len(chunk)
            if small is not None:
                small.append(chunk)
                if size <= SMALL_FILE_BYTES:
                    continue
                partial = await asyncio.to_thread(PartialFile, run_dir, "download")
                chunk, small = b"".join(small), None
            assert partial is not None
            # Hashing a 1 MiB chunk takes about a millisecond: a worker thread hashes and writes one
            # chunk while the next one is received (hashlib releases the GIL). Two chunks in memory.
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(asyncio.to_thread(_hash_and_write, digest, partial, chunk))
        if writing is not None:
            await writing
        fmt = detect_format(head, backend_name)
        filename = entity_filename(sequence, fmt.kind.entity_type, fmt.ext)
        if small is not None:
            await asyncio.to_thread(_write_whole, run_dir, small, digest, place(filename))
        else:
            assert partial is not None
            await asyncio.to_thread(partial.commit, place(filename))
    finally:
        if writing is not None and not writing.done():
            await asyncio.wait([writing])  # never remove the file under a write in progress
        if partial is not None:
            await asyncio.to_thread(partial.cleanup)
    return StoredFile(filename=filename, format=fmt, size_bytes=size, sha256=digest.hexdigest())
