"""Media kinds and formats: the explicit MIME table and content sniffing (the content decides, not the name)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


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
