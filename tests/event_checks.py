"""What a watcher's stream of run events must look like.

A watcher that falls behind gets progress coalesced: a ``node_progress`` event is skipped when a newer
one for the same node is already there, and its seq shows the gap. Nothing else is ever skipped. These
checks hold however far behind a watcher was, so tests stay exact without depending on timing.
"""

from __future__ import annotations

from pathlib import Path

from comfy_generation.runstore import RunStore
from comfygen.v1 import generation_pb2 as pb
from generation_service.convert import to_proto

TERMINAL = ("completed", "failed", "cancelled")


def kind(event: pb.RunEvent) -> str:
    return event.WhichOneof("kind") or ""


def journaled(events: list[pb.RunEvent]) -> list[pb.RunEvent]:
    """The events that are journaled: all but previews (which carry the seq of the event before them)."""
    return [e for e in events if kind(e) != "preview"]


def assert_one_run(events: list[pb.RunEvent]) -> None:
    """One run: seq rising from 1 (``accepted``), exactly one terminal event, last; a gap only before a
    ``node_progress`` event (the newer progress that replaced the skipped ones)."""
    events = journaled(events)
    assert len({e.run_id for e in events}) == 1
    assert events[0].seq == 1 and kind(events[0]) == "accepted", [kind(e) for e in events[:3]]
    for before, after in zip(events, events[1:], strict=False):
        assert after.seq > before.seq, [e.seq for e in events]
        assert after.seq == before.seq + 1 or kind(after) == "node_progress", (before.seq, after.seq, kind(after))
    terminal = [e for e in events if kind(e) in TERMINAL]
    assert terminal == [events[-1]], [kind(e) for e in events]


def coalesced(events: list[pb.RunEvent]) -> list[pb.RunEvent]:
    """``events`` as a watcher gets them that is behind all of them: each node's newest progress only."""
    newest: dict[str, int] = {}
    for e in events:
        if kind(e) == "node_progress":
            newest[e.node_progress.node_id] = e.seq
    return [e for e in events if kind(e) != "node_progress" or newest[e.node_progress.node_id] == e.seq]


def assert_coalesced(received: list[pb.RunEvent], journal: list[pb.RunEvent]) -> None:
    """``received`` is ``journal`` (every event of the run from some point, in order) as a watcher got
    it: each event the same, byte for byte, and every one left out a superseded ``node_progress``."""
    received = journaled(received)
    by_seq = {e.seq: e for e in journal}
    assert [e.SerializeToString() for e in received] == [by_seq[e.seq].SerializeToString() for e in received]
    assert_coalesced_seqs([e.seq for e in received], journal)


def assert_coalesced_seqs(seqs: list[int], journal: list[pb.RunEvent]) -> None:
    """``seqs`` (what a watcher received) rise, start with the journal's first event that was not
    coalesced away, and leave out only ``node_progress`` events with a newer one for their node after
    them in ``seqs``."""
    assert seqs == sorted(set(seqs)), seqs
    by_seq = {e.seq: e for e in journal}
    got = set(seqs)
    for e in journal:
        if e.seq in got or e.seq > seqs[-1]:
            continue
        assert kind(e) == "node_progress", f"seq {e.seq} ({kind(e)}) was not delivered; got {seqs}"
        node = e.node_progress.node_id
        newer = [s for s in seqs if s > e.seq and kind(by_seq[s]) == "node_progress"]
        assert any(by_seq[s].node_progress.node_id == node for s in newer), f"seq {e.seq} left out for nothing"


def read_journal(runs_dir: Path, run_id: str) -> list[pb.RunEvent]:
    """The run's every event, from its journal, as the service sends them."""
    return [to_proto(e) for e in RunStore(runs_dir).read_events(run_id)]
