"""The names of everything replica mode keeps in Redis, under one prefix."""

from __future__ import annotations

from dataclasses import dataclass

from comfy_generation.runstore import RunStatus

OWNERS_GROUP = "owners"  # the consumer group of the active-runs stream; each replica is a consumer


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def active(self) -> str:
        """Stream with one entry per unfinished run; its group's pending list says who owns which."""
        return f"{self.prefix}:active"

    @property
    def slots(self) -> str:
        """Sorted set of the runs in flight (the shared max_runs_in_flight), scored by expiry."""
        return f"{self.prefix}:slots"

    @property
    def index(self) -> str:
        """Sorted set of every run, members '<created>|<run_id>' in lexical order (ListRuns pages)."""
        return f"{self.prefix}:index"

    def status_index(self, status: RunStatus) -> str:
        return f"{self.prefix}:index:{status.value}"

    @property
    def cancels(self) -> str:
        """Pub/sub channel: the run id of each cancel request, for its owner."""
        return f"{self.prefix}:cancels"

    @property
    def indexed(self) -> str:
        """Set once run storage was indexed into this Redis: gone after Redis lost its data."""
        return f"{self.prefix}:indexed"

    def events(self, run_id: str) -> str:
        """Stream of the run's events, entry id 0-<seq>."""
        return f"{self.prefix}:run:{run_id}:events"

    def previews(self, run_id: str) -> str:
        """Stream holding the run's latest live preview only (MAXLEN 1): previews are never journaled."""
        return f"{self.prefix}:run:{run_id}:previews"

    @property
    def durations(self) -> str:
        """Hash of measured durations (backend and workflow -> profile JSON), for estimates."""
        return f"{self.prefix}:durations"

    def record(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:record"

    def cancel(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:cancel"

    def request(self, request_id: str) -> str:
        return f"{self.prefix}:request:{request_id}"

    def unseen(self, backend: str) -> str:
        """Sorted set of prompts dispatched to the backend and not yet seen in its queue, by dispatch time."""
        return f"{self.prefix}:backend:{backend}:unseen"
