"""What the service knows about every run in its storage: status and creation time for listing and
paging, request ids for idempotent retries. Built by scanning run storage at start-up, kept current
from each run's record."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from comfy_generation.runstore import DamagedRecord, RunMissing, RunRecord, RunStatus, RunStore, parse_run_id
from comfy_generation.runstore.events import RunEvent
from generation_service.errors import InvalidRequest
from generation_service.run_writer import RunWriter

MAX_PAGE = 1000
DEFAULT_PAGE = 50
MAX_TOKEN_CHARS = 256  # the tokens this service issues have about 120


@dataclass
class _Entry:
    created: str
    status: RunStatus
    fingerprint: str


class RunIndex:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._requests: dict[str, str] = {}  # request_id -> run_id, for runs that were accepted
        self._damaged: dict[str, str] = {}  # run_id -> what is wrong with its folder

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._entries

    def track(self, writer: RunWriter) -> None:
        """Index a run and follow its status changes."""
        record = writer.record
        entry = _Entry(record.timestamp, record.status, record.request_fingerprint)
        self._entries[record.run_id] = entry

        def on_change(record: RunRecord) -> None:
            entry.status = record.status

        writer.on_change = on_change

    def mark_damaged(self, run_id: str, problem: str) -> None:
        self._damaged[run_id] = problem

    def damage(self, run_id: str) -> str | None:
        """What is wrong with the run's folder, if it was found damaged."""
        return self._damaged.get(run_id)

    def remember_request(self, request_id: str, run_id: str) -> None:
        self._requests[request_id] = run_id

    def run_for_request(self, request_id: str) -> tuple[str, str] | None:
        """The run a request id started and that request's fingerprint, or None."""
        run_id = self._requests.get(request_id)
        return (run_id, self._entries[run_id].fingerprint) if run_id else None

    def page(self, statuses: frozenset[RunStatus], page_size: int, page_token: str) -> tuple[list[str], str]:
        """Run ids newest first, after the position ``page_token`` names; and the next page's token."""
        size = page_size or DEFAULT_PAGE
        if not 1 <= size <= MAX_PAGE:
            raise InvalidRequest(f"page_size must be between 1 and {MAX_PAGE}")
        after = decode_token(page_token)
        ordered = sorted(
            ((e.created, run_id) for run_id, e in self._entries.items() if not statuses or e.status in statuses),
            reverse=True,
        )
        rest = [key for key in ordered if after is None or key < after]
        page = rest[:size]
        return [run_id for _, run_id in page], token_after(*page[-1]) if len(rest) > size else ""


@dataclass(frozen=True)
class Loaded:
    """A run folder read at start-up."""

    record: RunRecord
    events: list[RunEvent]


def scan(store: RunStore) -> dict[str, Loaded | DamagedRecord]:
    """Every run folder of run storage, read, or the damage that kept it from being read (blocking: run
    it on a worker thread). Folders without a record (a run being created) are skipped."""
    found: dict[str, Loaded | DamagedRecord] = {}
    for run_id in store.run_ids():
        try:
            record = store.read_record(run_id)
            found[run_id] = Loaded(record, store.read_events(run_id))
        except RunMissing:
            continue
        except DamagedRecord as exc:
            found[run_id] = exc
    return found


def token_after(created: str, run_id: str) -> str:
    """The page token of the runs after this one (``created`` is its metadata's ``timestamp``)."""
    return base64.urlsafe_b64encode(json.dumps([created, run_id]).encode()).decode()


def decode_token(token: str) -> tuple[str, str] | None:
    if not token:
        return None
    try:
        if len(token) > MAX_TOKEN_CHARS:  # before decoding: garbage of any size costs nothing
            raise ValueError("too long")
        key = json.loads(base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode("utf-8"))
        if not (isinstance(key, list) and len(key) == 2 and all(isinstance(part, str) for part in key)):
            raise ValueError("not a [created, run_id] pair")
        created, run_id = key
        return created, parse_run_id(run_id)
    except ValueError as exc:  # also bad base64, non-UTF-8 bytes, invalid JSON, a malformed run id
        raise InvalidRequest("page_token is not one this service issued") from exc
