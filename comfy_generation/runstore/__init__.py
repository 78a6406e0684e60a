"""Run storage: the on-disk contract shared by the generation service (writer) and the media gateway (reader).

Layout::

    <root>/<run_id>/metadata.json            run record, rewritten atomically on every change
    <root>/<run_id>/NN_<entity type>.<ext>   one file per entity, NN = the entity's sequence number

``metadata.json`` holds ``{run_id, timestamp, status, prompt_id, backend, workflow, template, params,
current_state, entities: [{sequence, type, filename, timestamp, metadata}], ...}``. Output entities have
type ``output_<kind>`` (``output_image``, ``output_audio``, ``output_video``, ...). Readers find files by
entity type through this module, never by file name, and never build a path from URL text.

Every write is atomic (a temp file in the same folder, fsync, ``os.replace``): a reader never sees a
torn ``metadata.json`` or a half-written media file. This module imports nothing from gRPC.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
import stat
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

METADATA_FILE = "metadata.json"
# The service writes records of a few KiB (a workflow and a list of entities); a reader refuses a larger one
# unread instead of parsing whatever a tampered or runaway file holds.
MAX_RECORD_BYTES = 4 * 1024 * 1024
PARTIAL_SUFFIX = ".partial"
_RUN_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class InvalidRunId(ValueError):
    """The text is not a canonical run id (a lowercase, hyphenated UUID)."""


class MediaKind(StrEnum):
    """The kind of an output file; also the ``<type>`` segment of gateway URLs."""

    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    MODEL = "model"  # 3D models (glb, gltf)
    FILE = "file"  # anything we cannot identify: kept, never served as media

    @property
    def entity_type(self) -> str:
        return f"output_{self.value}"


class RunStatus(StrEnum):
    """A run's lifecycle state as recorded in ``metadata.json``."""

    ACCEPTED = "accepted"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


@dataclass(frozen=True)
class MediaFormat:
    """What a file extension means: its kind, canonical extension and the MIME type we serve it with."""

    kind: MediaKind
    ext: str  # without the dot
    mime: str


# The explicit MIME table. The platform's mimetypes table lacks flac, opus, webp, m4a and mkv on slim
# systems, and guesses differ between hosts, so it is never consulted.
_FORMATS: dict[str, MediaFormat] = {
    f.ext: f
    for f in (
        MediaFormat(MediaKind.IMAGE, "png", "image/png"),
        MediaFormat(MediaKind.IMAGE, "jpg", "image/jpeg"),
        MediaFormat(MediaKind.IMAGE, "webp", "image/webp"),
        MediaFormat(MediaKind.IMAGE, "gif", "image/gif"),
        MediaFormat(MediaKind.IMAGE, "avif", "image/avif"),
        MediaFormat(MediaKind.AUDIO, "mp3", "audio/mpeg"),
        MediaFormat(MediaKind.AUDIO, "flac", "audio/flac"),
        MediaFormat(MediaKind.AUDIO, "wav", "audio/wav"),
        MediaFormat(MediaKind.AUDIO, "ogg", "audio/ogg"),
        MediaFormat(MediaKind.AUDIO, "opus", "audio/ogg"),  # Opus in an Ogg container, as ComfyUI writes it
        MediaFormat(MediaKind.AUDIO, "m4a", "audio/mp4"),
        MediaFormat(MediaKind.AUDIO, "aac", "audio/aac"),
        MediaFormat(MediaKind.VIDEO, "mp4", "video/mp4"),
        MediaFormat(MediaKind.VIDEO, "webm", "video/webm"),
        MediaFormat(MediaKind.VIDEO, "mov", "video/quicktime"),
        MediaFormat(MediaKind.VIDEO, "mkv", "video/x-matroska"),
        MediaFormat(MediaKind.MODEL, "glb", "model/gltf-binary"),
        MediaFormat(MediaKind.MODEL, "gltf", "model/gltf+json"),
    )
}
_EXT_ALIASES = {"jpeg": "jpg"}
UNKNOWN_FORMAT = MediaFormat(MediaKind.FILE, "bin", "application/octet-stream")


def format_for_extension(ext: str) -> MediaFormat | None:
    """The format for a file extension (with or without the dot), or None when it is not in the table."""
    ext = ext.lower().lstrip(".")
    return _FORMATS.get(_EXT_ALIASES.get(ext, ext))


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"fLaC", "flac"),
    (b"ID3", "mp3"),
    (b"glTF", "glb"),
)
_RIFF = {b"WEBP": "webp", b"WAVE": "wav"}
_ISO_BRANDS = {b"avif": "avif", b"avis": "avif", b"qt  ": "mov", b"M4A ": "m4a", b"M4B ": "m4a"}


def _sniff(head: bytes) -> str | None:
    """The extension the leading bytes of a file prove, or None. Containers that hold several formats
    (ISO BMFF, Matroska, Ogg, RIFF) are told apart by brand or codec where the header says."""
    for magic, ext in _MAGIC:
        if head.startswith(magic):
            return ext
    if head[:4] == b"RIFF":
        return _RIFF.get(head[8:12])
    if head.startswith(b"OggS"):
        return "opus" if b"OpusHead" in head[:128] else "ogg"
    if head[4:8] == b"ftyp":
        return _ISO_BRANDS.get(head[8:12], "mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in head[:64] else "mkv"
    return _sniff_mpeg_audio(head)


def _sniff_mpeg_audio(head: bytes) -> str | None:
    """A bare MPEG audio frame header: MP3 (layer bits set) or ADTS AAC (layer bits zero)."""
    if len(head) < 2 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    if head[1] & 0xF6 == 0xF0:
        return "aac"
    return "mp3" if head[1] & 0x06 else None


SNIFF_BYTES = 128


def detect_format(head: bytes, filename: str) -> MediaFormat:
    """Decide a file's format from its first bytes, falling back to the name's extension.

    The content wins over the name: a save node can write any name, and the kind decides where the
    gateway serves it. An ``.m4a`` name with an ISO BMFF body stays audio; an ``.opus`` file whose
    sniffed container is Ogg keeps its ``.opus`` extension.
    """
    by_name = format_for_extension(Path(filename).suffix)
    sniffed = _sniff(head)
    if sniffed is None:
        return by_name or UNKNOWN_FORMAT
    by_content = _FORMATS[sniffed]
    if by_name is not None and by_name.kind == by_content.kind and _compatible(by_name.ext, sniffed):
        return by_name
    return by_content


def _compatible(name_ext: str, sniffed_ext: str) -> bool:
    families = ({"mp4", "m4a", "mov"}, {"webm", "mkv"}, {"ogg", "opus"})
    return name_ext == sniffed_ext or any(name_ext in f and sniffed_ext in f for f in families)


def new_run_id() -> str:
    return str(uuid.uuid4())


def parse_run_id(text: str) -> str:
    """Return ``text`` if it is a canonical run id, else raise InvalidRunId. Call before any path work."""
    if not isinstance(text, str) or not _RUN_ID_RE.fullmatch(text):
        raise InvalidRunId("run id must be a lowercase hyphenated UUID")
    return text


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entity_filename(sequence: int, entity_type: str, ext: str) -> str:
    return f"{sequence:02d}_{entity_type}.{ext.lstrip('.')}"


def media_url(base_url: str, kind: MediaKind, run_id: str, index: int) -> str:
    """The gateway URL of a run's ``index``-th output of ``kind`` (0-based, in sequence order)."""
    return f"{base_url.rstrip('/')}/api/media/{kind.value}/{run_id}/{index}"


def sign_media_path(path: str, secret: str, expires: int) -> str:
    """The signature of a gateway path valid until ``expires`` (Unix seconds): hex HMAC-SHA256."""
    return hmac.new(secret.encode(), f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_media_url(url: str, secret: str, expires: int) -> str:
    """``url`` with ``expires`` and ``sig`` query parameters that the gateway checks."""
    path = urlsplit(url).path
    return f"{url}?expires={expires}&sig={sign_media_path(path, secret, expires)}"


def signature_problem(path: str, expires: str | None, sig: str | None, secret: str, now: float) -> str | None:
    """Why a signed request is refused, or None when its signature is valid and unexpired."""
    if not expires or not sig:
        return "this URL needs a signature (expires and sig parameters)"
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:  # int() of "²" or 5000 digits raises
        return "the expires parameter is not a Unix time"
    if not hmac.compare_digest(sign_media_path(path, secret, int(expires)).encode(), sig.encode()):  # any text
        return "the signature does not match this URL"
    if int(expires) < now:
        return "this URL has expired"
    return None


def _valid_entities(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """Entities that are well formed (a dict with an integer sequence), in sequence order.

    metadata.json is written only by the service, but a reader must not crash on a hand-edited one.
    """
    entities = metadata.get("entities")
    valid = [
        e
        for e in (entities if isinstance(entities, list) else [])
        if isinstance(e, dict) and isinstance(e.get("sequence"), int) and not isinstance(e.get("sequence"), bool)
    ]
    return sorted(valid, key=lambda e: int(e["sequence"]))


def output_entities(metadata: dict[str, Any], kind: MediaKind) -> list[dict[str, Any]]:
    """The run's outputs of one kind, in sequence order (the gateway's 0-based index counts these)."""
    return [e for e in _valid_entities(metadata) if e.get("type") == kind.entity_type]


def all_outputs(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """Every output entity, in sequence order."""
    return [e for e in _valid_entities(metadata) if str(e.get("type", "")).startswith("output_")]


def _fsync_dir(path: Path) -> None:
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
            _fsync_dir(final.parent)

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the temp file unless it was committed."""
        if not self.file.closed or self.path.exists():
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
    """How run storage writes JSON (indented, UTF-8 as is)."""
    return json.dumps(data, indent=2, ensure_ascii=False)


def write_text_atomic(path: Path, text: str, durable: bool = True) -> None:
    with atomic_file(path, durable) as fh:
        fh.write(text.encode())


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    write_text_atomic(path, metadata_text(data), durable)


class RunStore:
    """Path building and metadata I/O for one run-storage root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def run_dir(self, run_id: str) -> Path:
        return self.root / parse_run_id(run_id)

    def metadata_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / METADATA_FILE

    def create_run(self, run_id: str) -> Path:
        path = self.run_dir(run_id)
        path.mkdir(parents=True, exist_ok=False)
        return path

    def write_metadata(self, run_id: str, metadata: dict[str, Any]) -> None:
        write_json_atomic(self.metadata_path(run_id), metadata)

    def read_metadata(self, run_id: str) -> dict[str, Any] | None:
        """The run's metadata, or None when the run does not exist (or its record is unreadable)."""
        try:
            data = json.loads(self.metadata_path(run_id).read_bytes())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def entity_path(self, run_id: str, entity: dict[str, Any]) -> Path | None:
        """The file of an entity, or None unless it is a plain file name inside the run's own folder.

        A second line of defence behind run-id validation: a tampered ``filename`` (``../x``, an absolute
        path) never resolves to a servable path, and symlinks are refused outright (the service never
        writes one, so one is either tampering or a mistake).
        """
        name = entity.get("filename")
        if not isinstance(name, str) or not name or name != Path(name).name or name.startswith("."):
            return None
        try:
            run_dir = self.run_dir(run_id).resolve()
            path = run_dir / name
            if path.is_symlink() or path.resolve().parent != run_dir or not path.is_file():
                return None
        except OSError:  # resolve() raises when a component is swapped between its own steps: not servable
            return None
        return path


def open_run_file(path: Path) -> tuple[int, os.stat_result]:
    """Open ``<root>/<run_id>/<name>`` for reading without following a symlink; return the fd and its fstat.

    The run folder is opened with O_NOFOLLOW | O_DIRECTORY and the file relative to it with O_NOFOLLOW, so a
    folder or file swapped for a symlink at any moment is refused, never read through; checks made on the
    path beforehand (``entity_path``) cannot promise that. Read only from the returned fd, and take sizes
    and dates from its stat. O_NONBLOCK keeps a FIFO from blocking the open. Raises FileNotFoundError
    (or NotADirectoryError) when the folder or file is missing, a symlink, or not a plain file.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    dir_fd = os.open(path.parent, flags | os.O_DIRECTORY)  # a symlinked folder: NotADirectoryError
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
        raise FileNotFoundError(errno.ENOENT, "not a regular file", os.fspath(path))
    return fd, st
