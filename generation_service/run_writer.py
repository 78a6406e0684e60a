"""The one writer of a run's storage: its record, its journal and its outputs.

Everything a run writes goes through its RunWriter, on the accept, reject, resume and finish paths alike.
A write that fails (a full disk) never raises into the run: the writer keeps what it could not write,
tells the run once through ``on_failure`` (the run then fails with a storage error, which watchers still
see live), and ``settle`` writes the backlog once storage takes writes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

from comfy_generation.runstore import (
    CurrentState,
    Entity,
    JournalWriter,
    OutputMeta,
    RunOptions,
    RunRecord,
    RunStatus,
    RunStore,
    WorkflowMeta,
    record_text,
    utc_now,
    write_text_atomic,
)
from comfy_generation.runstore.events import RunEvent
from comfy_generation.runstore.layout import WORKFLOW_FILE
from comfy_generation.runstore.schema import JsonValue
from generation_service.storage_health import StorageHealth

PROGRESS_WRITE_DELAY_S = 0.25
# Replacing a file costs about 0.3 ms of kernel CPU on ext4 (renaming over a file starts its writeback):
# at a record write per progress step, a thousand runs spend more than half a core on it. Between
# durable writes, a run's record is written at most this often; the journal has every step meanwhile.
RECORD_WRITE_INTERVAL_S = 2.0
STAGED_AT_ONCE_BYTES = 8 * 1024 * 1024  # a staged output this big is recorded at once (see stage)


@dataclasses.dataclass(frozen=True)
class NewRun:
    """What a run's first record holds besides its id."""

    prompt_id: str
    backend: str
    workflow_name: str
    options: RunOptions
    request_id: str = ""
    fingerprint: str = ""
    template: str = ""
    params: dict[str, JsonValue] = dataclasses.field(default_factory=dict)
    seeds: dict[str, int] = dataclasses.field(default_factory=dict)
    uploaded_inputs: bool = False


class RunWriter:
    """Owns one run folder. Only the runner that owns the run holds one.

    ``still_owner`` (replica mode) is asked before every write: once it says no, another replica has
    taken the run over, and this writer is *deposed*: it writes nothing more, ever, and tells the run
    once through ``on_deposed``.
    """

    def __init__(
        self,
        store: RunStore,
        record: RunRecord,
        storage: StorageHealth,
        still_owner: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.record = record
        self.storage = storage
        self.still_owner = still_owner
        self.deposed = False
        self.on_change: Callable[[RunRecord], None] = lambda record: None
        self.on_failure: Callable[[str], None] = lambda message: None
        self.on_deposed: Callable[[], None] = lambda: None
        self.failure = ""  # set by the first write that failed; cleared by settle()
        self._journal: JournalWriter | None = None
        self._unjournaled: list[RunEvent] = []
        self._lock = asyncio.Lock()  # one record write at a time; each writes the latest state
        self._pending = False
        self._flusher: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # set by drain(): the background write goes now, without its delay

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def may_write(self) -> bool:
        """Whether this writer still owns the run (always, outside replica mode)."""
        if self.deposed:
            return False
        if self.still_owner is None or self.still_owner():
            return True
        self.deposed = True
        self.close()
        self.on_deposed()
        return False

    # -- creating and resuming (blocking: call on a worker thread) --------------------------------

    @classmethod
    def create(
        cls, store: RunStore, storage: StorageHealth, run_id: str, new: NewRun, workflow: dict[str, Any]
    ) -> RunWriter:
        """Create the run folder with its archived workflow (entity 1), first record and journal.

        Raises OSError when storage cannot take it, leaving no folder behind.
        """
        run_dir = store.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=False)
        now = utc_now()
        record = RunRecord(
            run_id=run_id,
            timestamp=now,
            status=RunStatus.ACCEPTED,
            prompt_id=new.prompt_id,
            backend=new.backend,
            workflow=new.workflow_name,
            options=new.options,
            current_state=CurrentState("submitting"),
            entities=(
                Entity(1, "workflow", WORKFLOW_FILE, now, WorkflowMeta("json", "application/json", len(workflow))),
            ),
            template=new.template,
            params=new.params,
            seeds=new.seeds,
            request_id=new.request_id,
            request_fingerprint=new.fingerprint,
            uploaded_inputs=new.uploaded_inputs,
        )
        try:
            # Not fsynced: a killed process loses nothing; only a machine crash could lose runs in flight.
            write_text_atomic(run_dir / WORKFLOW_FILE, json.dumps(workflow, indent=2, ensure_ascii=False), False)
            write_text_atomic(store.metadata_path(run_id), record_text(record), durable=False)
            writer = cls(store, record, storage)
            writer._journal = JournalWriter(store.events_path(run_id))
        except OSError:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return writer

    def resume(self) -> None:
        """Take the folder over after a restart: open the journal, drop half-written files, and keep only
        the staged outputs whose file survived (the rest are downloaded again)."""
        for leftover in self.store.leftovers(self.run_id):
            leftover.unlink(missing_ok=True)
        kept = tuple(e for e in self.record.staged if self._staged_file_exists(e))
        if kept != self.record.staged:
            self.record = dataclasses.replace(self.record, staged=kept)
        self._journal = JournalWriter(self.store.events_path(self.run_id))

    def _staged_file_exists(self, entity: Entity) -> bool:
        return any(
            p.is_file()
            for p in (
                self.store.staged_path(self.run_id, entity.filename),
                self.store.run_dir(self.run_id) / entity.filename,
            )
        )

    # -- the journal --------------------------------------------------------------------------------

    def journal(self, event: RunEvent) -> None:
        """Append an event before anyone sees it; while storage fails, keep it for ``settle``."""
        if not self.may_write():
            return
        if self._journal is None or self.failure:
            self._unjournaled.append(event)
            return
        try:
            self._journal.append(event)
        except OSError as exc:
            self._unjournaled.append(event)
            self._failed(exc, "recording a run event")
            return
        if event.is_terminal:
            self.close()

    def close(self) -> None:
        if self._journal is not None:
            with contextlib.suppress(OSError):
                self._journal.close()
            self._journal = None

    # -- the record ---------------------------------------------------------------------------------

    async def update(self, *, durable: bool = False, **changes: Any) -> None:
        """Apply the changes to the record and write it.

        A durable update (an output published, the final state) is written and fsynced before this
        returns. Progress is written in the background without fsync, coalesced to the latest state: the
        journal already has every step, and a run's progress must never wait for a disk. Readers see a
        whole file either way.
        """
        if not self.may_write():
            return
        self.record = dataclasses.replace(self.record, **changes)
        self.on_change(self.record)
        if durable:
            self._pending = False
            await self._write(durable=True)
            return
        self._pending = True
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"record-{self.run_id}")

    async def written(self) -> None:
        """Write the current state now (without fsync)."""
        self._pending = False
        await self._write(durable=False)

    async def _flush(self) -> None:
        # A short delay coalesces the bursts of a run's start (queued, running, the first nodes) into
        # one write; a quick run reaches its durable final write first and writes no progress at all.
        # Then it stays one interval after each write, so the writes that follow are that far apart.
        delay = PROGRESS_WRITE_DELAY_S
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._hurry.wait()
            if not self._pending:
                return
            self._pending = False
            await self._write(durable=False)
            delay = RECORD_WRITE_INTERVAL_S

    async def drain(self) -> None:
        """Write the pending progress now and wait for it: before the run's folder gets another owner (the
        next start of the service), so that it finds the latest state and this writer writes no more."""
        self._hurry.set()
        if self._flusher is not None:
            await self._flusher

    async def _write(self, durable: bool) -> None:
        if self.failure:
            return  # settle() writes the latest record
        async with self._lock:
            if not self.may_write():
                return
            text = record_text(self.record)  # serialised here: later changes must not race the writer thread
            try:
                await asyncio.to_thread(write_text_atomic, self.store.metadata_path(self.run_id), text, durable)
            except OSError as exc:
                self._failed(exc, "writing the run record")

    def _failed(self, exc: OSError, what: str) -> None:
        first = not self.failure
        self.failure = self.storage.failed(exc, what)
        self.close()  # settle() appends the backlog through a fresh journal writer
        if first:
            self.on_failure(self.failure)

    async def settle(self) -> None:
        """Write what could not be written (journal lines, the latest record) once storage takes writes
        again. The run's last duty: it stays live, and watchable, until this returns."""
        while self.failure:
            await self.storage.wait_writable()
            if not self.may_write():
                return
            try:
                await asyncio.to_thread(self._write_backlog)
            except OSError as exc:
                self.storage.failed(exc, "recording a run's last events")
                continue
            self.failure = ""

    def _write_backlog(self) -> None:
        journal = JournalWriter(self.store.events_path(self.run_id))  # cuts a torn last line first
        try:
            while self._unjournaled:
                journal.append(self._unjournaled[0])
                del self._unjournaled[0]
        finally:
            journal.close()
        write_text_atomic(self.store.metadata_path(self.run_id), record_text(self.record), durable=True)

    # -- outputs ------------------------------------------------------------------------------------

    async def stage(self, entity: Entity) -> None:
        """Record an output whose file is at ``store.staged_path``: hidden until ``publish``."""
        await self.update(staged=(*self.record.staged, entity))
        size = entity.metadata.size_bytes if isinstance(entity.metadata, OutputMeta) else 0
        if size >= STAGED_AT_ONCE_BYTES:
            await self.written()  # a restart keeps it and does not download it again
        # A smaller one is written with the next record (a run's outputs are published next): a
        # restart in between downloads it again.

    async def publish(self) -> tuple[Entity, ...]:
        """Move every staged output into place and list them all in the record at once."""
        staged = self.record.staged
        if not self.may_write():
            return ()
        try:
            await asyncio.to_thread(self._move_into_place, staged)
        except OSError as exc:
            self._failed(exc, "publishing the run's outputs")
            return ()
        await self.update(entities=(*self.record.entities, *staged), staged=(), durable=True)
        return staged

    def _move_into_place(self, staged: tuple[Entity, ...]) -> None:
        run_dir = self.store.run_dir(self.run_id)
        for entity in staged:
            source = self.store.staged_path(self.run_id, entity.filename)
            if source.exists() or not (run_dir / entity.filename).exists():  # moved already before a restart
                os.replace(source, run_dir / entity.filename)

    async def discard_outputs(self) -> None:
        """A run that did not complete keeps no output: remove staged and published ones alike."""
        outputs = (*self.record.staged, *self.record.outputs())
        if not outputs or not self.may_write():
            return

        def remove() -> None:
            for entity in outputs:
                for path in (
                    self.store.staged_path(self.run_id, entity.filename),
                    self.store.run_dir(self.run_id) / entity.filename,
                ):
                    with contextlib.suppress(OSError):
                        path.unlink()

        await asyncio.to_thread(remove)
        kept = tuple(e for e in self.record.entities if e.kind is None)
        await self.update(entities=kept, staged=())
