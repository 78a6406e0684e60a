"""A run's events as server-sent events, read from its journal in run storage (the gateway never talks
to the service): ``id:`` is the event's seq, ``event:`` its kind, ``data:`` the JSON the client library's
``event_to_dict`` prints for the same event, with output URLs minted by the gateway (signed afresh).

The journal is followed by reading what was appended since the last look, a few times a second; the
stream ends after the terminal event. A run that makes previews has its latest one in its folder
(``preview.jpg`` or ``preview.png``): each time it changes, a ``preview`` event gives its URL.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from comfy_generation.runstore import DamagedRecord, MediaKind, RunStore
from comfy_generation.runstore import events as ev
from comfy_generation.runstore.schema import MAX_MESSAGE_CHARS, cut_text

POLL_S = 0.25
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream
ENDED_CHECK_S = 2.0  # how often a quiet stream looks whether its run ended without a terminal event
PREVIEW_FILES = ("preview.jpg", "preview.png")
MAX_PROBLEMS = 20

UrlFor = Callable[[MediaKind, str, int], str]


def timestamp_json(moment: datetime) -> str:
    """As protobuf's Timestamp.ToJsonString writes it: UTC, 'Z', 0, 3 or 6 fraction digits."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    micros = utc.microsecond
    if micros == 0:
        return text + "Z"
    return text + (f".{micros // 1000:03d}Z" if micros % 1000 == 0 else f".{micros:06d}Z")


def seconds_json(seconds: float) -> float:
    """A duration as the client prints it: whole nanoseconds, as protobuf's Duration keeps it."""
    nanos = int(seconds * 1e9)
    return nanos // 10**9 + (nanos % 10**9) / 1e9


def _estimate(estimate: ev.Estimate | None) -> dict[str, Any]:
    if estimate is None:
        return {}  # unset: no basis for one
    completion = datetime.fromisoformat(estimate.completion.replace("Z", "+00:00"))
    return {
        "estimate": {
            "completion": timestamp_json(completion),
            "remaining": seconds_json(estimate.remaining_s),
            "basis": estimate.basis.value,
        }
    }


def _output(output: ev.StoredOutput, run_id: str, url_for: UrlFor) -> dict[str, Any]:
    return {
        "media_type": output.kind.value,
        "index": output.index,
        "url": url_for(output.kind, run_id, output.index),  # minted now: the journal's may have expired
        "mime": output.mime,
        "size_bytes": output.size_bytes,
        "sha256": output.sha256,
        "node_id": output.node_id,
        "filename": output.filename,
    }


def _failed(body: ev.Failed) -> dict[str, Any]:
    return {
        "code": body.code.value,
        "message": cut_text(body.message, MAX_MESSAGE_CHARS),
        "node_id": body.node_id,
        "node_type": body.node_type,
        "exception_type": body.exception_type,
        "node_errors": [
            {
                "node_id": p.node_id,
                "class_type": p.class_type,
                "type": p.type,
                "message": p.message,
                "details": p.details,
                "input_name": p.input_name,
            }
            for p in body.node_errors[:MAX_PROBLEMS]
        ],
    }


def _outputs(body: ev.Completed, run_id: str, url_for: UrlFor) -> dict[str, Any]:
    return {
        "outputs": [_output(o, run_id, url_for) for o in body.outputs],
        "queue_wait": seconds_json(body.queue_wait_s),
        "execution": seconds_json(body.execution_s),
    }


# Domain event class -> its fields as the client prints them (the proto's names and shapes).
_FIELDS: dict[type, Callable[[Any, str, UrlFor], dict[str, Any]]] = {
    ev.Accepted: lambda b, run_id, url_for: {
        "prompt_id": b.prompt_id,
        "backend": b.backend,
        "workflow_name": b.workflow_name,
        "template": b.template,
        "seeds": dict(b.seeds),
    },
    ev.Queued: lambda b, run_id, url_for: {"position": b.position, "backend": b.backend, **_estimate(b.estimate)},
    ev.Started: lambda b, run_id, url_for: {"queue_wait": seconds_json(b.queue_wait_s), **_estimate(b.estimate)},
    ev.NodeStarted: lambda b, run_id, url_for: {
        "node_id": b.node_id,
        "class_type": b.class_type,
        "title": b.title,
        "overall": b.overall,
        **_estimate(b.estimate),
    },
    ev.NodeProgress: lambda b, run_id, url_for: {
        "node_id": b.node_id,
        "value": b.value,
        "max": b.max,
        "overall": b.overall,
        **_estimate(b.estimate),
    },
    ev.NodesCached: lambda b, run_id, url_for: {"node_ids": list(b.node_ids)},
    ev.OutputReady: lambda b, run_id, url_for: _output(b.output, run_id, url_for),
    ev.Completed: _outputs,
    ev.Failed: lambda b, run_id, url_for: _failed(b),
    ev.Cancelled: lambda b, run_id, url_for: {"reason": b.reason},
}


def event_dict(event: ev.RunEvent, url_for: UrlFor) -> dict[str, Any]:
    """The event as the client library's ``event_to_dict`` shapes it (a test holds the two together)."""
    fields = _FIELDS[type(event.body)](event.body, event.run_id, url_for)
    head = {"run_id": event.run_id, "seq": event.seq, "time": timestamp_json(event.time)}
    return {**head, "type": ev.kind_name(event.body), **fields}


def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _preview_version(store: RunStore, run_id: str) -> tuple[str, int] | None:
    for name in PREVIEW_FILES:
        try:
            return name, os.stat(store.run_dir(run_id) / name).st_mtime_ns
        except OSError:
            continue
    return None


async def event_stream(
    store: RunStore,
    run_id: str,
    after_seq: int,
    url_for: UrlFor,
    preview_url: Callable[[str, int], str],
    ended: Callable[[], bool],
) -> AsyncIterator[bytes]:
    """The run's events after ``after_seq`` as SSE, then live ones, ending after the terminal event, or
    once ``ended()`` (blocking: a worker thread calls it) says the run ended without one (a run refused
    before it was accepted has no events at all)."""
    offset, quiet, ending = 0, 0.0, False
    preview: tuple[str, int] | None = None
    while True:
        try:
            events, offset = await asyncio.to_thread(store.read_new_events, run_id, offset)
        except DamagedRecord as exc:  # the stream is open already: say it as its last event
            yield sse("error", {"run_id": run_id, "error": str(exc)})
            return
        for event in events:
            if event.seq <= after_seq:
                continue
            yield sse(ev.kind_name(event.body), event_dict(event, url_for), event.seq)
            if event.is_terminal:
                return
        if ending:
            return  # it ended without a terminal event (refused before it was accepted)
        current = await asyncio.to_thread(_preview_version, store, run_id)
        if current is not None and current != preview:
            preview = current
            yield sse("preview", {"run_id": run_id, "url": preview_url(*current)})
        quiet = 0.0 if events else quiet + POLL_S
        if not events and quiet % ENDED_CHECK_S < POLL_S and await asyncio.to_thread(ended):
            ending = True
            continue  # one more read: whatever was journaled before it ended
        if quiet >= KEEPALIVE_S:
            quiet = 0.0
            yield b": keep-alive\n\n"
        await asyncio.sleep(POLL_S)
