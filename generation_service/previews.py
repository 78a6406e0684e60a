"""ComfyUI's binary websocket frames: preview images (type 1: image type + bytes; type 4, for clients that
sent ``feature_flags`` with ``supports_preview_metadata``: metadata JSON + bytes). A sampler's previews and
``SaveImageWebsocket``'s images both come this way; which one a frame is follows from the node it is of.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}  # type 1's image type word
MIMES = frozenset(IMAGE_TYPES.values())
MAX_METADATA_BYTES = 64 * 1024  # a type-4 header is ~200 bytes; more is not ComfyUI's
FEATURE_FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}


@dataclass(frozen=True)
class ImageFrame:
    """One binary image frame. ``prompt_id`` and ``node_id`` are empty when the frame does not say (type 1:
    it is then of the prompt executing on that socket, and of its current node)."""

    prompt_id: str
    node_id: str
    mime: str
    image: bytes


def parse_frame(payload: bytes) -> ImageFrame | None:
    """The image of a binary frame; None for a frame that is not a well-formed JPEG/PNG preview."""
    if len(payload) < 8:
        return None
    event, word = struct.unpack(">II", payload[:8])
    if event == PREVIEW_IMAGE:
        mime = IMAGE_TYPES.get(word, "")
        return ImageFrame("", "", mime, payload[8:]) if mime else None
    if event != PREVIEW_IMAGE_WITH_METADATA or word > min(MAX_METADATA_BYTES, len(payload) - 8):
        return None
    try:
        meta = json.loads(payload[8 : 8 + word])
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("image_type") not in MIMES:
        return None
    prompt_id, node_id = meta.get("prompt_id"), meta.get("real_node_id") or meta.get("node_id")
    return ImageFrame(
        prompt_id if isinstance(prompt_id, str) else "",
        node_id if isinstance(node_id, str) else "",
        str(meta["image_type"]),
        payload[8 + word :],
    )


def image_size(image: bytes, mime: str) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR or a JPEG's start-of-frame; (0, 0) when it has neither."""
    if mime == "image/png":
        if len(image) >= 24 and image[12:16] == b"IHDR":
            width, height = struct.unpack(">II", image[16:24])
            return width, height
        return 0, 0
    i = 2
    while i + 9 <= len(image) and image[i] == 0xFF:
        marker = image[i + 1]
        length = int.from_bytes(image[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn, not DHT/JPG/DAC
            height, width = struct.unpack(">HH", image[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return 0, 0
