"""Events as sent on the wire, encoded once however many streams send them.

A run's watchers all read the same event objects from the run's log (or from its mirror, on a replica
that does not follow it), so an event is known by its identity: the first stream to send it converts
and serializes it, the others send those bytes. Each entry holds its event, so an identity is never
reused while it is cached; the cache keeps the most recently sent events up to a byte budget (previews
can be large).

``GenerateResponse`` and ``WatchRunResponse`` both carry the event alone as field 1, so one encoding
serves both.
"""

from __future__ import annotations

from collections import OrderedDict

from prometheus_client import Counter

from comfy_generation.runstore import events as ev
from comfygen.v1 import generation_pb2 as pb
from generation_service.convert import to_proto

CACHE_BYTES = 32 * 1024 * 1024


class EncodedEvents:
    def __init__(self, encoded: Counter, budget_bytes: int = CACHE_BYTES) -> None:
        self.encoded = encoded
        self.budget_bytes = budget_bytes
        self.cached_bytes = 0
        self._entries: OrderedDict[int, tuple[ev.RunEvent, bytes]] = OrderedDict()

    def response(self, event: ev.RunEvent) -> bytes:
        """The serialized ``WatchRunResponse`` (equally, ``GenerateResponse``) carrying ``event``."""
        key = id(event)
        entry = self._entries.get(key)
        if entry is not None:  # the entry holds its event alive: the same id is the same event
            self._entries.move_to_end(key)
            return entry[1]
        wire = pb.WatchRunResponse(event=to_proto(event)).SerializeToString()
        self.encoded.inc()
        if len(wire) <= self.budget_bytes:
            self._entries[key] = (event, wire)
            self.cached_bytes += len(wire)
            while self.cached_bytes > self.budget_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.cached_bytes -= len(dropped)
        return wire
