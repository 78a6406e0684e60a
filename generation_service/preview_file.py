"""A run's latest preview in its folder (``preview.jpg`` or ``preview.png``), for late watchers and the run
page: atomically replaced (a reader sees a whole image, old or new), written on a worker thread, and only
the newest one: previews that come faster than the disk takes them replace each other in memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

PREVIEW_NAMES = {"image/jpeg": "preview.jpg", "image/png": "preview.png"}


class LatestPreview:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._pending: tuple[bytes, str] | None = None
        self._writing: asyncio.Task[None] | None = None

    def offer(self, image: bytes, mime: str) -> None:
        """Keep this as the run's latest preview (written soon, unless a newer one comes first)."""
        if mime not in PREVIEW_NAMES:
            return
        self._pending = (image, mime)
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_latest(), name="latest-preview")

    async def finish(self, keep: bool) -> None:
        """The run ended: write the last one out and keep it, or remove the file."""
        if self._writing is not None:
            await asyncio.wait([self._writing])
        if not keep:
            await asyncio.to_thread(self._remove_all)

    async def _write_latest(self) -> None:
        while self._pending is not None:
            (image, mime), self._pending = self._pending, None
            try:
                await asyncio.to_thread(self._replace, image, mime)
            except OSError as exc:  # a preview is not worth failing the run for
                logger.warning("could not store the latest preview in %s: %s", self.run_dir.name, exc)

    def _replace(self, image: bytes, mime: str) -> None:
        name = PREVIEW_NAMES[mime]
        partial = self.run_dir / f".{name}.partial"
        with open(partial, "wb") as fh:
            fh.write(image)
        os.replace(partial, self.run_dir / name)
        for other in PREVIEW_NAMES.values():
            if other != name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.run_dir / other)

    def _remove_all(self) -> None:
        for name in PREVIEW_NAMES.values():
            for path in (self.run_dir / name, self.run_dir / f".{name}.partial"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
