"""Shared helpers of the comfy_simulator tests: transcripts, a websocket client, frame normalisation."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np

TRANSCRIPTS = Path(__file__).resolve().parent / "data" / "comfyui-transcripts"
TIMEOUT = 20.0


def transcript(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((TRANSCRIPTS / f"{name}.json").read_text())
    return data


def workflow(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((TRANSCRIPTS / "workflows" / f"{name}.json").read_text())
    return data


def recorded_frames(name: str, label: str | None = None) -> list[dict[str, Any]]:
    for ws in transcript(name)["websockets"]:
        if label is None or ws["label"] == label:
            return [f["json"] for f in ws["frames"] if f["kind"] == "text" and "dir" not in f]
    raise KeyError(label)


def write_tone(path: Path, seconds: float = 1.0, rate: int = 44100) -> None:
    """A stereo 440 Hz WAV (what the recordings' ``test_tone_speech.wav`` stands for)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(
            np.stack([wave, wave]).T.reshape(1, -1).copy(), format="s16", layout="stereo"
        )
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _type_name(value: Any) -> str:
    return type(value).__name__


BINARY = "<binary>"  # the type Client gives a binary frame: {"type": BINARY, "data": {"bytes": ...}}


def recorded_sequence(name: str) -> list[tuple[Any, ...]]:
    """Tokens of the recorded frames a client received, binary ones included (after the initial status)."""
    frames = transcript(name)["websockets"][0]["frames"]
    received = [f for f in frames if "dir" not in f]
    return [binary_token_recorded(f) if f["kind"] == "binary" else token(f["json"]) for f in received[1:]]


def binary_token_recorded(f: dict[str, Any]) -> tuple[Any, ...]:
    if f["event_type_be_u32"] == 1:
        return BINARY, 1, f["image_type_be_u32"], f["payload_magic"]
    meta = f["metadata_json"]
    return BINARY, 4, tuple(sorted(meta)), meta["image_type"], f["payload_magic"]


def binary_parts(payload: bytes) -> tuple[int, dict[str, Any] | int, bytes]:
    """(event type, metadata JSON for type 4 / image type for type 1, image bytes) of a binary frame."""
    event, second = struct.unpack(">II", payload[:8])
    if event == 4:
        return event, json.loads(payload[8 : 8 + second]), payload[8 + second :]
    return event, second, payload[8:]


def token(frame: dict[str, Any]) -> tuple[Any, ...]:
    """What must match between a recorded and a simulated frame: type, data keys, value types and the
    protocol-relevant values; ids, timestamps and file names are left out."""
    kind, data = frame["type"], frame["data"]
    if kind == BINARY:
        event, meta, image = binary_parts(data["bytes"])
        if isinstance(meta, dict):
            return BINARY, 4, tuple(sorted(meta)), meta["image_type"], image[:4].hex()
        return BINARY, 1, meta, image[:4].hex()
    shape = tuple(sorted((k, _type_name(v)) for k, v in data.items()))
    if kind == "status":
        return kind, data["status"]["exec_info"]["queue_remaining"], "sid" in data
    if kind == "executing":
        return kind, shape, data["node"] is None
    if kind == "executed":
        return kind, shape, tuple(sorted(data["output"] or {}))
    if kind == "progress_state":
        nodes = tuple(
            (n["state"], _type_name(n["value"]), _type_name(n["max"]), tuple(sorted(n))) for n in data["nodes"].values()
        )
        return kind, shape, nodes
    if kind == "execution_cached":
        return kind, shape, len(data["nodes"])
    return kind, shape


def tokens(frames: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [token(f) for f in frames]


def split_status(frames: list[dict[str, Any]]) -> tuple[list[tuple[Any, ...]], list[int]]:
    """(non-status tokens, queue_remaining sequence): for runs whose status interleaving depends on timing."""
    others = [token(f) for f in frames if f["type"] != "status"]
    statuses = [f["data"]["status"]["exec_info"]["queue_remaining"] for f in frames if f["type"] == "status"]
    return others, statuses


class Client:
    """One websocket client of the simulator plus an HTTP session."""

    def __init__(self, session: aiohttp.ClientSession, base: str, client_id: str | None = None) -> None:
        self.session = session
        self.base = base
        self.client_id = client_id or str(uuid.uuid4())
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.frames: list[dict[str, Any]] = []

    async def connect(self, headers: dict[str, str] | None = None) -> Client:
        url = self.base.replace("http://", "ws://") + f"/ws?clientId={self.client_id}"
        self.ws = await self.session.ws_connect(url, headers=headers)
        await self.next_frame()  # the initial status
        return self

    async def next_frame(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        assert self.ws is not None
        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            frame: dict[str, Any] = {"type": BINARY, "data": {"bytes": msg.data}}
        elif msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"websocket ended: {msg.type}")
        else:
            frame = json.loads(msg.data)
        self.frames.append(frame)
        return frame

    async def until(self, predicate: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.next_frame()
                if predicate(frame):
                    return frame

    async def wait_done(self, prompt_id: str) -> list[dict[str, Any]]:
        start = len(self.frames)
        await self.until(lambda f: f["type"] == "executing" and f["data"] == {"node": None, "prompt_id": prompt_id})
        return self.frames[start:]

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.session.post(self.base + path, json=body) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)

    async def get(self, path: str) -> Any:
        async with self.session.get(self.base + path) as resp:
            assert resp.status == 200
            return await resp.json()

    async def submit(self, prompt: dict[str, Any], **extra: Any) -> dict[str, Any]:
        status, body = await self.post("/prompt", {"prompt": prompt, "client_id": self.client_id, **extra})
        assert status == 200, body
        return dict(body)

    async def run(self, prompt: dict[str, Any], **extra: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Submit and follow to ``executing:null``; returns (POST answer, frames since the initial status)."""
        start = len(self.frames)
        answer = await self.submit(prompt, **extra)
        await self.wait_done(answer["prompt_id"])
        return answer, self.frames[start:]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
