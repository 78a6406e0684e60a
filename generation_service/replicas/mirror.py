"""Watching a run another replica owns: one reader of the run's Redis stream per run and replica, shared
by every watcher of that run here.

The stream holds the run's events under their seq, so a watcher never sees one twice and notices a gap
(a stream Redis lost, or one that expired after the run ended); the gap is filled from the run's journal
in run storage, which the owner wrote first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from comfy_generation.runstore import DamagedRecord, RunStore
from comfy_generation.runstore import events as ev
from generation_service.replicas.link import BLOCK_MS, REDIS_DOWN, RedisLink, streams_read
from generation_service.replicas.replicator import preview_from_text, seq_of
from generation_service.run_handle import EventLog

logger = logging.getLogger(__name__)

READ_COUNT = 1000


class RunMirror:
    def __init__(self, link: RedisLink, store: RunStore, run_id: str) -> None:
        self.link = link
        self.store = store
        self.run_id = run_id
        self.log = EventLog()
        self.watchers = 0
        self.task = asyncio.create_task(self._read(), name=f"mirror-{run_id}")

    async def _read(self) -> None:
        key, previews = self.link.keys.events(self.run_id), self.link.keys.previews(self.run_id)
        preview_id = "0-0"
        while not self.log.finished:
            streams: dict[Any, Any] = {key: f"0-{self.log.last_seq}", previews: preview_id}
            try:
                reply = await self.link.blocking.xread(streams, count=READ_COUNT, block=BLOCK_MS)
            except REDIS_DOWN:
                await self._from_storage()  # the owner keeps journaling while Redis is away
                await asyncio.sleep(0.5)
                continue
            if not reply:
                # Quiet for a while: a run that ended long ago (its stream expired) or an owner that is
                # gone until its runs are taken over. Storage has whatever was journaled.
                await self._from_storage()
                continue
            found = streams_read(reply)
            for entry_id, fields in found.get(previews, []):
                preview_id = entry_id  # the stream keeps the newest one only: show it
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    self.log.show_preview(preview_from_text(self.run_id, fields["preview"]))
            await self._take(found.get(key, []))

    async def _take(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Events read from the stream, in seq order; a gap is filled from the journal first."""
        for entry_id, fields in entries:
            seq = seq_of(entry_id)
            if seq > self.log.last_seq + 1:
                await self._from_storage()
            if seq <= self.log.last_seq:
                continue
            try:
                event = ev.RunEvent.from_json(self.run_id, fields["event"])
            except (DamagedRecord, KeyError):
                logger.error("run %s: an unreadable event in Redis at seq %d", self.run_id, seq)
                await self._from_storage()
                continue
            self.log.append(event)
            if event.is_terminal:
                return

    async def _from_storage(self) -> None:
        try:
            journaled = await asyncio.to_thread(self.store.read_events, self.run_id)
        except DamagedRecord as exc:
            logger.error("run %s: %s", self.run_id, exc)
            return
        for event in journaled[self.log.last_seq :]:
            self.log.append(event)
            if event.is_terminal:
                return

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class MirrorHub:
    """The mirrors of this replica, by run id; a mirror lives while someone watches it."""

    def __init__(self, link: RedisLink, store: RunStore) -> None:
        self.link = link
        self.store = store
        self._mirrors: dict[str, RunMirror] = {}

    async def events(self, run_id: str, after_seq: int = 0) -> AsyncIterator[ev.RunEvent]:
        mirror = self._mirrors.get(run_id)
        if mirror is None:
            mirror = self._mirrors[run_id] = RunMirror(self.link, self.store, run_id)
        mirror.watchers += 1
        try:
            async for event in mirror.log.events(after_seq):
                yield event
        finally:
            mirror.watchers -= 1
            if mirror.watchers == 0 and self._mirrors.get(run_id) is mirror:
                del self._mirrors[run_id]
                await mirror.close()

    async def close(self) -> None:
        for mirror in list(self._mirrors.values()):
            await mirror.close()
        self._mirrors.clear()
