"""What the run logic needs of a ComfyUI backend: the ``Backend`` protocol and the values it trades in.

``ComfyBackend`` (comfy_backend.py) implements it over HTTP and one websocket; tests of the run logic's
edge cases use a fast in-memory implementation. Every method that talks to the backend raises only
GenerationError subclasses (BackendUnavailable, BackendProtocolError, WorkflowRejected).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from generation_service.comfy_replies import FileRef, HistoryEntry
from generation_service.errors import BackendUnavailable

QUEUE_SNAPSHOT_S = 0.5


@dataclass(frozen=True)
class QueueState:
    running: bool
    ahead: int  # prompts that run before this one (running ones included)


class SocketLost:
    """Put in a subscription's queue when the websocket it depended on went away."""


SOCKET_LOST = SocketLost()


@dataclass
class Subscription:
    """The websocket frames of one prompt, in arrival order."""

    prompt_id: str
    client_id: str = ""
    blind: bool = False  # events may have been missed: rely on /history
    frames: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)  # frames, SOCKET_LOST, or control items


class Backend(Protocol):
    """One ComfyUI, shared by every run of the process that was dispatched to it."""

    @property
    def public_url(self) -> str:
        """The base URL without credentials, for records and events."""
        ...

    def subscribe(self, prompt_id: str, frames: asyncio.Queue[Any] | None = None) -> Subscription:
        """Route the prompt's websocket frames to the returned subscription (before submitting it), into
        ``frames`` when given (a run that moves between backends keeps its inbox)."""
        ...

    def unsubscribe(self, sub: Subscription) -> None: ...

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait for the websocket (bounded); False when there is none and runs must poll."""
        ...

    async def submit(self, sub: Subscription, graph: dict[str, Any]) -> dict[str, Any]:
        """Queue the prompt under ``sub.prompt_id``; returns ComfyUI's ``node_errors`` (non-empty on a
        partial acceptance). Raises WorkflowRejected when the backend refuses it."""
        ...

    async def queue_state(self, prompt_id: str, max_age_s: float = QUEUE_SNAPSHOT_S) -> QueueState | None:
        """Where the prompt is in the queue (from a snapshot at most ``max_age_s`` old); None when it is
        neither running nor pending."""
        ...

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        """The prompt's history entry; None while it is queued, running or unknown."""
        ...

    def download(self, ref: FileRef) -> AsyncIterator[bytes]:
        """The file's bytes, in chunks (never held whole)."""
        ...

    async def delete(self, prompt_id: str) -> None:
        """Remove the prompt from the queue if it is still pending."""
        ...

    async def interrupt(self, prompt_id: str) -> None:
        """Stop the prompt if it is running (at the end of its current node)."""
        ...

    async def upload(self, data: bytes, filename: str, subfolder: str = "") -> str:
        """Store an input file; returns the name a Load* node takes."""
        ...

    async def probe(self) -> bool:
        """Whether the backend answers right now."""
        ...


class PoolClient(Backend, Protocol):
    """What the pool needs of a backend besides what runs use: its lifecycle, its whole queue, its nodes."""

    on_reconnect: Callable[[], None]  # its websocket connected again (the backend may have restarted)
    on_connect: Callable[[], None]  # its websocket connected (the first time too): the backend answers

    @property
    def connected(self) -> bool:
        """Whether its websocket is open right now."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def queue_snapshot(self, max_age_s: float = QUEUE_SNAPSHOT_S) -> dict[str, QueueState]:
        """Every prompt it runs or holds, by prompt id."""
        ...

    async def node_classes(self) -> frozenset[str]:
        """The node classes it offers."""
        ...


async def cancel_prompt(backend: Backend, prompt_id: str) -> None:
    """Stop a prompt wherever it is: out of the queue if pending, interrupted if running."""
    await backend.delete(prompt_id)
    await backend.interrupt(prompt_id)


class DetachedBackend:
    """Stands in for a backend that left the pool while runs still named it: every request fails, so
    the run moves (or fails) through the usual backend-lost path."""

    def __init__(self, name: str) -> None:
        self.public_url = name

    def _gone(self) -> BackendUnavailable:
        return BackendUnavailable(f"backend {self.public_url} is no longer part of the pool")

    def subscribe(self, prompt_id: str, frames: asyncio.Queue[Any] | None = None) -> Subscription:
        return (
            Subscription(prompt_id, blind=True)
            if frames is None
            else Subscription(prompt_id, blind=True, frames=frames)
        )

    def unsubscribe(self, sub: Subscription) -> None:
        pass

    async def wait_connected(self, timeout_s: float) -> bool:
        return False

    async def submit(self, sub: Subscription, graph: dict[str, Any]) -> dict[str, Any]:
        raise self._gone()

    async def queue_state(self, prompt_id: str, max_age_s: float = QUEUE_SNAPSHOT_S) -> QueueState | None:
        raise self._gone()

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        raise self._gone()

    async def download(self, ref: FileRef) -> AsyncIterator[bytes]:
        raise self._gone()
        yield b""  # an async generator, like the real one

    async def delete(self, prompt_id: str) -> None:
        raise self._gone()

    async def interrupt(self, prompt_id: str) -> None:
        raise self._gone()

    async def upload(self, data: bytes, filename: str, subfolder: str = "") -> str:
        raise self._gone()

    async def probe(self) -> bool:
        return False
