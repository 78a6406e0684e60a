"""What the owner of a run copies into Redis: its events into the run's stream and its latest record into
the record key and the run index. Run storage is written first; this follows it, and catches up by
itself whenever Redis was away."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
from collections.abc import Sequence
from datetime import datetime

from comfy_generation.runstore import RunRecord, RunStatus, record_text
from comfy_generation.runstore import events as ev
from generation_service.errors import RedisUnavailable
from generation_service.replicas.keys import Keys
from generation_service.replicas.link import RedisLink, stream_entries

logger = logging.getLogger(__name__)

BATCH = 500  # events per round trip when catching up


def seq_of(entry_id: str) -> int:
    """An event's seq from its stream entry id (0-<seq>)."""
    return int(entry_id.partition("-")[2])


def preview_text(event: ev.RunEvent) -> str:
    """A preview event as the previews stream carries it (the image as base64)."""
    body = event.body
    assert isinstance(body, ev.Preview)
    fields = {k: v for k, v in dataclasses.asdict(body).items() if k != "image"}
    return json.dumps(
        {"seq": event.seq, "time": event.time.isoformat(), **fields, "image": base64.b64encode(body.image).decode()}
    )


def preview_from_text(run_id: str, text: str) -> ev.RunEvent:
    data = json.loads(text)
    body = ev.Preview(
        str(data["node_id"]),
        int(data["step"]),
        int(data["max"]),
        str(data["mime"]),
        int(data["width"]),
        int(data["height"]),
        base64.b64decode(data["image"]),
        int(data["number"]),
    )
    return ev.RunEvent(run_id, int(data["seq"]), datetime.fromisoformat(data["time"]), body)


def index_member(record: RunRecord) -> str:
    return f"{record.timestamp}|{record.run_id}"


def index_commands(pipe: object, keys: Keys, record: RunRecord, before: RunStatus | None) -> None:
    """Queue on ``pipe`` what puts the run in the index under its status (and out of ``before``'s)."""
    member = index_member(record)
    pipe.zadd(keys.index, {member: 0})  # type: ignore[attr-defined]
    if before is not None and before != record.status:
        pipe.zrem(keys.status_index(before), member)  # type: ignore[attr-defined]
    pipe.zadd(keys.status_index(record.status), {member: 0})  # type: ignore[attr-defined]


class RunReplicator:
    """One per run this replica owns. ``changed()`` after each event and record change; the copying runs
    in the background, in order, a batch at a time."""

    def __init__(self, link: RedisLink, history: Sequence[ev.RunEvent], record: RunRecord, retention_s: float) -> None:
        self.link = link
        self.keys = link.keys
        self.history = history
        self.record = record
        self.retention_s = retention_s
        self._sent: int | None = None  # the seq the stream ends at; None: ask Redis
        self._record_sent: RunRecord | None = None
        self._status_sent: RunStatus | None = None
        self._preview: ev.RunEvent | None = None  # the newest preview not copied yet (older ones are moot)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task = asyncio.create_task(self._follow(), name=f"replicate-{record.run_id}")

    def record_changed(self, record: RunRecord) -> None:
        self.record = record
        self.changed()

    def preview(self, event: ev.RunEvent) -> None:
        self._preview = event
        self.changed()

    def changed(self) -> None:
        self._idle.clear()
        self._wake.set()

    def resync(self) -> None:
        """Redis may have lost what was copied: copy everything it lacks again."""
        self._sent, self._record_sent, self._status_sent = None, None, None
        self.changed()

    async def flush(self) -> None:
        """Wait until Redis has every event and the latest record."""
        self.changed()
        await self._idle.wait()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _follow(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while not self._synced:
                    await self._copy()
            except RedisUnavailable:
                self._sent = None  # Redis may come back without what it had
                await self.link.wait_up()
                self._wake.set()
                continue
            except Exception:
                logger.exception("copying run %s to Redis failed", self.record.run_id)
                await asyncio.sleep(1.0)
                self._wake.set()
                continue
            self._idle.set()

    @property
    def _synced(self) -> bool:
        return self._sent == len(self.history) and self._record_sent is self.record and self._preview is None

    async def _stream_end(self, run_id: str) -> int:
        """The seq the run's stream ends at. A stream that lacks its first events (Redis lost them, then
        took the next ones) is written anew: entry ids only grow, so they cannot be put back before."""
        key = self.keys.events(run_id)

        async def ends() -> tuple[list[object], list[object]]:
            async with self.link.redis.pipeline(transaction=False) as pipe:
                pipe.xrange(key, count=1)
                pipe.xrevrange(key, count=1)
                first, last = await pipe.execute()
                return first, last

        first, last = (stream_entries(r) for r in await self.link.call("reading a run's stream", ends))
        if first and seq_of(first[0][0]) != 1:
            await self.link.call("rewriting a run's stream", lambda: self.link.redis.delete(key))
            return 0
        return seq_of(last[0][0]) if last else 0

    def _check(self, results: list[object]) -> None:
        for result in results:
            # An entry id at or below the stream's last one: that event is there already (sent twice).
            if isinstance(result, Exception) and "equal or smaller" not in str(result):
                logger.error("Redis refused a copy of run %s: %s", self.record.run_id, result)

    async def _copy(self) -> None:
        run_id = self.record.run_id
        if self._sent is None:
            self._sent = await self._stream_end(run_id)
        sent = self._sent
        batch = list(self.history[sent : sent + BATCH])
        record = self.record
        preview, self._preview = self._preview, None

        async def send() -> list[object]:
            async with self.link.redis.pipeline(transaction=False) as pipe:
                for event in batch:
                    pipe.xadd(self.keys.events(run_id), {"event": event.to_json()}, id=f"0-{event.seq}")
                if preview is not None:
                    pipe.xadd(self.keys.previews(run_id), {"preview": preview_text(preview)}, maxlen=1)
                if record is not self._record_sent:
                    pipe.set(self.keys.record(run_id), record_text(record))
                    if record.status != self._status_sent:
                        index_commands(pipe, self.keys, record, self._status_sent)
                if record.status.is_terminal and batch and batch[-1].is_terminal:
                    pipe.expire(self.keys.events(run_id), int(self.retention_s))
                    pipe.expire(self.keys.record(run_id), int(self.retention_s))
                    pipe.delete(self.keys.previews(run_id))
                    pipe.delete(self.keys.cancel(run_id))
                return list(await pipe.execute(raise_on_error=False))

        self._check(await self.link.call("copying a run's events", send))
        if batch:
            self._sent = batch[-1].seq
        self._record_sent = record
        self._status_sent = record.status
