"""The live event log of one run: numbered, journaled (by the run's writer) before it is shown, readable
by any number of watchers, each from any point."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from comfy_generation.runstore import events as ev
from generation_service.run_writer import RunWriter


class CancelRequest:
    """Put in a run's inbox to ask its follower to cancel it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class BackendLost:
    """Put in a run's inbox when the backend it runs on stopped answering (or left the pool)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend


class Deposed:
    """Put in a run's inbox when another replica took the run over: the follower stops at once, writing
    nothing and leaving the prompt alone."""


class StorageFailure:
    """Put in a run's inbox when its writer could not write: the run fails with a storage error."""

    def __init__(self, message: str) -> None:
        self.message = message


class RunView(Protocol):
    """What a caller that started a run holds: the run followed here, or by another replica."""

    @property
    def run_id(self) -> str: ...

    def events(self, after_seq: int = 0) -> AsyncIterator[ev.RunEvent]: ...

    def cancel(self, reason: str) -> None: ...


class EventLog:
    """A run's events in memory, numbered from 1, readable by any number of watchers from any point.

    A watcher that falls behind gets progress coalesced: a ``node_progress`` event is skipped when a newer
    one for the same node is already in the log (the watcher gets that one at its place), so the watcher
    catches up, and its seq shows a gap. It never misses any other event.

    Beside them, one slot holds the run's latest preview: a watcher gets it at its place in the stream
    (after the event whose seq it carries) if no newer preview replaced it by the time the watcher gets
    there. So a watcher that falls behind gets the newest preview, never a backlog of them.
    """

    def __init__(self, past: Sequence[ev.RunEvent] = ()) -> None:
        self._events: list[ev.RunEvent] = []
        self._newest_progress: dict[str, int] = {}  # node id -> seq of its newest node_progress event
        for event in past:
            self._add(event)
        self._wakeup = asyncio.Event()
        self.closed = False  # no more events will come here (the run ended, or is followed elsewhere)
        self.preview: ev.RunEvent | None = None  # its body is an ev.Preview

    @property
    def finished(self) -> bool:
        return bool(self._events) and self._events[-1].is_terminal

    @property
    def last_seq(self) -> int:
        return len(self._events)

    @property
    def history(self) -> Sequence[ev.RunEvent]:
        return self._events

    def append(self, event: ev.RunEvent) -> None:
        self._add(event)
        self._wake()

    def _add(self, event: ev.RunEvent) -> None:
        self._events.append(event)
        if isinstance(event.body, ev.NodeProgress):
            self._newest_progress[event.body.node_id] = event.seq

    def superseded(self, event: ev.RunEvent) -> bool:
        """Whether ``event`` is a ``node_progress`` event older than the newest one for its node."""
        body = event.body
        return isinstance(body, ev.NodeProgress) and self._newest_progress[body.node_id] > event.seq

    def show_preview(self, event: ev.RunEvent) -> None:
        """Replace the latest preview (``event.seq`` is the seq of the latest event before it)."""
        self.preview = event
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, asyncio.Event()
        wakeup.set()

    async def events(self, after_seq: int = 0) -> AsyncIterator[ev.RunEvent]:
        """Every event after ``after_seq``, then live ones, until the terminal event (or ``close``)."""
        index = max(0, after_seq)
        shown = 0  # the number of the last preview this watcher got
        while True:
            while True:
                preview = self.preview
                if preview is not None and preview.seq == index and _number(preview) > shown:
                    shown = _number(preview)
                    yield preview
                    continue  # a newer one may have come meanwhile, still at this place
                if index >= len(self._events):
                    break
                event = self._events[index]
                index += 1
                if self.superseded(event):
                    continue
                yield event
                if event.is_terminal:
                    return
            if self.finished or self.closed:
                return
            await self._wakeup.wait()


def _number(preview: ev.RunEvent) -> int:
    return preview.body.number if isinstance(preview.body, ev.Preview) else 0


class RunHandle:
    """A run followed by this process: its event log, journaled through its writer before anyone sees an
    event; ``inbox`` feeds the run's follower."""

    def __init__(
        self, run_id: str, inbox: asyncio.Queue[Any], writer: RunWriter | None, past: Sequence[ev.RunEvent] = ()
    ) -> None:
        self.run_id = run_id
        self.inbox = inbox
        self.writer = writer
        self.log = EventLog(past)
        if writer is None:
            self.log.close()
        self.task: asyncio.Task[None] | None = None
        self.on_publish: Callable[[ev.RunEvent], None] = lambda event: None
        self.on_preview: Callable[[ev.RunEvent], None] = lambda event: None

    @classmethod
    def replay(cls, run_id: str, past: Sequence[ev.RunEvent]) -> RunHandle:
        """A read-only handle over the persisted events of a run that is not live."""
        return cls(run_id, asyncio.Queue(), None, past)

    @property
    def finished(self) -> bool:
        return self.log.finished

    @property
    def last_seq(self) -> int:
        return self.log.last_seq

    @property
    def history(self) -> Sequence[ev.RunEvent]:
        return self.log.history

    def publish(self, body: ev.EventBody) -> ev.RunEvent | None:
        """Journal the event, then show it. None: the run is no longer this process's to write (another
        replica took it over), and nothing was written or shown."""
        if self.finished or self.writer is None:
            raise RuntimeError(f"run {self.run_id} is not live; cannot publish {type(body).__name__}")
        if self.writer.deposed:
            return None
        event = ev.RunEvent(self.run_id, self.last_seq + 1, datetime.now(UTC), body)
        self.writer.journal(event)  # never raises: a failed write reaches the follower through its inbox
        if self.writer.deposed:
            return None
        self.log.append(event)
        self.on_publish(event)
        return event

    def show_preview(self, body: ev.Preview) -> ev.RunEvent | None:
        """Show a preview to the watchers, without journaling it: it carries the latest event's seq."""
        if self.finished or self.writer is None or self.writer.deposed:
            return None
        event = ev.RunEvent(self.run_id, self.last_seq, datetime.now(UTC), body)
        self.log.show_preview(event)
        self.on_preview(event)
        return event

    def events(self, after_seq: int = 0) -> AsyncIterator[ev.RunEvent]:
        """Every event after ``after_seq``, then live ones, until the terminal event."""
        return self.log.events(after_seq)

    def cancel(self, reason: str) -> None:
        """Ask the run to stop; it ends ``cancelled`` unless it ends otherwise first."""
        if not self.finished:
            self.inbox.put_nowait(CancelRequest(reason))

    def close(self) -> None:
        """Stop writing the journal (the service is stopping; the run will be resumed later)."""
        if self.writer is not None:
            self.writer.close()

    async def wait_finished(self) -> None:
        if self.task is not None:
            await asyncio.shield(self.task)
