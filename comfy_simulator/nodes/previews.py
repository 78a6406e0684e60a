"""Sampler previews as ComfyUI's latent previewer makes them (``latent_preview.prepare_callback``): with a
``--preview-method`` other than none, a JPEG after every step, handed to the progress hook with the step.

The picture is the latent's progress made visible: a gradient that brightens and a band that moves with
the step, so consecutive previews differ and a viewer can tell them apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np

from .. import media
from ..settings import SimulatorSettings

TAESD_MAX_SIZE = 512  # ComfyUI's --preview-size default
PreviewMaker = Callable[[int, int], Awaitable[tuple[str, bytes]]]


def preview_size(method: str, width: int, height: int) -> tuple[int, int]:
    """latent2rgb (and auto without TAESD weights) shows the latent itself, 1/8 of the pixels each way;
    taesd decodes to full size, scaled down to at most ``TAESD_MAX_SIZE``."""
    if method == "taesd":
        scale = min(1.0, TAESD_MAX_SIZE / max(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))
    return max(1, width // 8), max(1, height // 8)


def sampler_previews(settings: SimulatorSettings, width: int, height: int) -> PreviewMaker | None:
    """What a sampler of a ``width`` × ``height`` image calls per step; None without a preview method."""
    if settings.preview_method == "none" or width <= 0 or height <= 0:
        return None
    w, h = preview_size(settings.preview_method, width, height)

    async def make(step: int, steps: int) -> tuple[str, bytes]:
        return "JPEG", await asyncio.to_thread(media.jpeg_bytes, _picture(w, h, step, steps))

    return make


def _picture(width: int, height: int, step: int, steps: int) -> np.ndarray:
    done = step / max(1, steps)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    rgb = np.empty((height, width, 3), np.float32)
    rgb[..., 0] = 0.2 + 0.8 * done * x
    rgb[..., 1] = 0.2 + 0.8 * done * y
    rgb[..., 2] = 0.5 * (1.0 - done)
    band = max(1, width // 8)
    left = int(done * (width - band))
    rgb[:, left : left + band, :] = 1.0
    return media.to_uint8(np.broadcast_to(rgb, rgb.shape))
