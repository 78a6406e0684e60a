"""Fault switches that failure-handling tests flip on a running simulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Faults:
    """Mutable switches, read by the server on every request / frame / queue step.

    - ``drop_socket_after_frames``: every websocket is closed after N more frames (counted from the moment
      the value is set; 0 closes each socket before its next frame).
    - ``refuse_connections``: every HTTP request and websocket upgrade of the ComfyUI API answers
      503 with ``Connection: close``.
    - ``http_500_paths``: paths answered with aiohttp's 500 text/plain page; ``/history`` matches
      ``/history``, ``/history/<id>``, ``/api/history`` and ``/api/history/<id>``.
    - ``forget_prompts``: ``POST /prompt`` answers 200 but the prompt never enters the queue, and prompts that
      finish never get a history entry.
    - ``history_delay_s``: the history entry is written that long after the prompt finished (the ``status``
      and ``executing:null`` frames are not delayed), widening ComfyUI's R1 race.
    - ``stall``: the worker takes no new prompt from the queue while set.
    """

    drop_socket_after_frames: int | None = None
    refuse_connections: bool = False
    http_500_paths: set[str] = field(default_factory=set)
    forget_prompts: bool = False
    history_delay_s: float = 0.0
    stall: bool = False
    # Bumped whenever drop_socket_after_frames is assigned, so sockets restart their count.
    drop_epoch: int = field(default=0, repr=False)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "drop_socket_after_frames":
            super().__setattr__("drop_epoch", getattr(self, "drop_epoch", 0) + 1)
        if name == "stall" and not value:
            listener = getattr(self, "_on_unstall", None)
            if listener is not None:
                listener()

    def set_unstall_listener(self, listener: Any) -> None:
        object.__setattr__(self, "_on_unstall", listener)

    def is_500_path(self, path: str) -> bool:
        """``/history`` covers ``/history``, ``/history/<id>`` and their ``/api/`` forms."""
        if path.startswith("/api/"):
            path = path[4:]
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.http_500_paths)

    def reset(self) -> None:
        """Switch every fault off."""
        self.drop_socket_after_frames = None
        self.refuse_connections = False
        self.http_500_paths = set()
        self.forget_prompts = False
        self.history_delay_s = 0.0
        self.stall = False
