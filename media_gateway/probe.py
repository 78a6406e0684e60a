"""What a media file says about itself (duration, width, height), read with PyAV from the container headers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import av

logger = logging.getLogger(__name__)


def probe(path: Path) -> dict[str, Any]:
    """``duration_seconds`` / ``width`` / ``height`` where the file tells them; ``{}`` for what PyAV cannot
    open (a glTF model, a damaged file). Reads headers only, never decodes."""
    facts: dict[str, Any] = {}
    try:
        with av.open(str(path), "r") as container:
            if container.duration is not None and container.duration > 0:
                facts["duration_seconds"] = round(container.duration / av.time_base, 3)
            for stream in container.streams.video:
                width, height = stream.codec_context.width, stream.codec_context.height
                if width and height:
                    facts["width"], facts["height"] = int(width), int(height)
                    break
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        logger.debug("cannot probe %s: %s", path, exc)
        return {}
    if "width" in facts and facts.get("duration_seconds") is not None and path.suffix.lower() in _STILL:
        del facts["duration_seconds"]  # FFmpeg gives a still image a one-frame "duration"; it has none
    return facts


_STILL = {".png", ".jpg", ".jpeg", ".webp", ".avif"}
