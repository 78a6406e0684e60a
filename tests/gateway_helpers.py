"""Test helpers for the media gateway: small real media files and run folders built with runstore."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import struct
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from comfy_generation.runstore import (
    Entity,
    OutputMeta,
    RunStatus,
    RunStore,
    entity_filename,
    record_text,
    write_text_atomic,
)
from comfy_generation.runstore.builder import write_finished_run


def png_bytes(width: int = 4, height: int = 3, rgb: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    """A valid, tiny RGB PNG written by hand."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


@functools.cache
def mp3_bytes() -> bytes:
    """A quarter second of a 440 Hz tone, MP3-encoded by PyAV."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=22050)
        stream.layout = "mono"
        t = np.arange(22050 // 4) / 22050
        samples = (np.sin(2 * np.pi * 440 * t) * 0.3).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 22050
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


@functools.cache
def mp4_bytes() -> bytes:
    """Four 32x32 frames of MPEG-4 video in an MP4 container, encoded by PyAV."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.time_base = Fraction(1, 8)
        for i in range(4):
            image = np.full((32, 32, 3), i * 60, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def glb_bytes() -> bytes:
    """A minimal binary glTF: header plus an empty JSON chunk."""
    body = b'{"asset":{"version":"2.0"}}  '  # padded to a multiple of 4
    return b"glTF" + struct.pack("<II", 2, 12 + 8 + len(body)) + struct.pack("<I", len(body)) + b"JSON" + body


def write_run(root: Path, outputs: Sequence[tuple[bytes, str]], status: str = "completed") -> str:
    """Create a run folder like the generation service does; ``outputs`` are (content, backend file name)."""
    return write_finished_run(root, outputs, RunStatus(status))


def read_metadata(root: Path, run_id: str) -> dict[str, Any]:
    data = json.loads((root / run_id / "metadata.json").read_bytes())
    assert isinstance(data, dict)
    return data


def write_metadata(root: Path, run_id: str, data: object) -> None:
    """Replace a run's record with ``data`` as is: a hand edit, as an operator (or an attacker) would make."""
    (root / run_id).mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / run_id / "metadata.json", json.dumps(data, indent=2))


def write_run_as_named(root: Path, outputs: Sequence[tuple[str, str, bytes]]) -> str:
    """A finished run whose outputs are (kind, extension, content), stored as given: no sniffing."""
    store = RunStore(root)
    run_id = write_finished_run(root, [])
    record = store.read_record(run_id)
    entities = list(record.entities)
    for sequence, (kind, ext, content) in enumerate(outputs, start=2):
        name = entity_filename(sequence, f"output_{kind}", ext)
        (root / run_id / name).write_bytes(content)
        meta = OutputMeta(ext, "", len(content), hashlib.sha256(content).hexdigest(), "9", name, "", "output")
        entities.append(Entity(sequence, f"output_{kind}", name, record.timestamp, meta))
    write_text_atomic(store.metadata_path(run_id), record_text(dataclasses.replace(record, entities=tuple(entities))))
    return run_id
