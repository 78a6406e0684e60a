"""Outputs and run folders swapped for symlinks while both servers serve them: no byte from outside run storage.

The deterministic tests swap at the moments that matter (right after the catalog looked, right after the file
was opened); the race tests swap continuously from another process while a few thousand requests run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_helpers import write_run
from media_gateway import app as gateway_app
from media_gateway.catalog import RunCatalog
from media_gateway.http_semantics import Validators
from media_gateway.responses import MediaResponse
from media_gateway.serve import running_gateway, running_granian
from media_gateway.settings import Settings

SERVERS = {"uvicorn": running_gateway, "granian": running_granian}
REAL = bytes(range(256)) * 64  # 16 KiB; the gateway does not sniff what it serves
OUTSIDE = bytes(reversed(range(256))) * 64  # the same size, so a leaked body even has the right Content-Length
# (headers, the bytes of REAL expected: one slice for a whole file or a range, several for multipart)
REQUESTS: list[tuple[dict[str, str], list[tuple[int, int]]]] = [
    ({}, [(0, len(REAL))]),
    ({"Range": "bytes=100-1099"}, [(100, 1100)]),
    ({"Range": "bytes=0-9,-10"}, [(0, 10), (len(REAL) - 10, len(REAL))]),
]


# Both swaps are one renameat2(RENAME_EXCHANGE): the name is always either the real thing or the symlink.
_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> None:
    if _libc.renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2", str(a))


@dataclass
class Served:
    client: httpx.AsyncClient
    catalog: RunCatalog
    port: int
    url: str
    output: Path  # the output file in its run folder
    swaps: dict[str, tuple[Path, Path]]  # what is swapped -> (it, a symlink to its OUTSIDE counterpart)


@pytest.fixture(params=list(SERVERS))
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    run_id = write_run(runs_dir, [(REAL, "a.png")])
    folder = runs_dir / run_id
    output = folder / "02_output_image.png"
    outside_run = Path(shutil.copytree(folder, tmp_path / "outside-run"))  # the whole run, out of run storage
    (outside_run / output.name).write_bytes(OUTSIDE)
    (tmp_path / "outside.png").write_bytes(OUTSIDE)
    # The symlinks wait under names the gateway never serves (a hidden file, a folder that is no run id).
    output.with_name(".swap").symlink_to(tmp_path / "outside.png")
    folder.with_name(f"{run_id}.swap").symlink_to(outside_run)
    swaps = {"file": (output, output.with_name(".swap")), "run folder": (folder, folder.with_name(f"{run_id}.swap"))}
    async with SERVERS[request.param](Settings(runs_dir=runs_dir, listen="127.0.0.1:0")) as gateway:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
            url = f"/api/media/image/{run_id}/0"
            yield Served(client, gateway.app.state.catalog, gateway.port, url, output, swaps)


def _multipart(content_type: str, body: bytes) -> list[bytes]:
    boundary = content_type.split("boundary=")[1].encode()
    return [chunk.partition(b"\r\n\r\n")[2][:-2] for chunk in body.split(b"--" + boundary)[1:-1]]


def _outcome(status: int, content_type: str, body: bytes, slices: list[tuple[int, int]]) -> str:
    """``real``, ``404`` (JSON), ``outside`` (OUTSIDE bytes in the body) or ``other: <status>``."""
    if status == 404 and content_type == "application/json":
        return "404" if set(json.loads(body)) == {"error"} else "other: 404"
    if status == (200 if slices == [(0, len(REAL))] else 206):
        bodies = _multipart(content_type, body) if len(slices) > 1 else [body]
        if bodies == [REAL[a:b] for a, b in slices]:
            return "real"
        if bodies == [OUTSIDE[a:b] for a, b in slices]:
            return "outside"
    return f"other: {status}"


async def _get(client: httpx.AsyncClient, url: str, headers: dict[str, str], slices: list[tuple[int, int]]) -> str:
    try:
        response = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:  # a response cut off after its headers
        return f"other: {type(exc).__name__}"
    return _outcome(response.status_code, response.headers.get("content-type", ""), response.content, slices)


class _Connection:
    """One bare HTTP/1.1 keep-alive connection: httpx would cost more CPU per request than the server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, url: str, headers: dict[str, str], slices: list[tuple[int, int]]) -> str:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(f"GET {url} HTTP/1.1\r\nHost: gateway\r\n{fields}\r\n".encode())
        try:
            status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]
            head = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
            body = await reader.readexactly(int(head["content-length"]))
        except (OSError, asyncio.IncompleteReadError, KeyError, ValueError):
            writer.close()
            self.streams = None
            return "other: cut off"
        return _outcome(int(status_line.split()[1]), head.get("content-type", ""), body, slices)

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


def _after(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, action: Callable[[], None]) -> None:
    """Run ``action`` each time ``owner.name`` has returned, before its result is used."""
    original = getattr(owner, name)

    def wrapped(*args: Any) -> Any:
        result = original(*args)
        action()
        return result

    monkeypatch.setattr(owner, name, wrapped)


# --- swaps at the moments that matter -------------------------------------------------------------------


@pytest.mark.parametrize("swapped", ["file", "run folder"])
async def test_swap_right_after_the_lookup_is_404(served: Served, monkeypatch: pytest.MonkeyPatch, swapped):
    pair = served.swaps[swapped]
    _after(monkeypatch, served.catalog, "find_output", lambda: _exchange(*pair))

    for headers, slices in REQUESTS:
        assert await _get(served.client, served.url, headers, slices) == "404", headers
        _exchange(*pair)  # back to the real one for the next request


@pytest.mark.parametrize("swapped", ["file", "run folder"])
async def test_swap_right_after_the_open_still_serves_the_opened_file(
    served: Served, monkeypatch: pytest.MonkeyPatch, swapped
):
    pair = served.swaps[swapped]
    etag = Validators.of(os.stat(served.output)).etag  # the validators too are those of the file sent
    _after(monkeypatch, gateway_app, "open_output", lambda: _exchange(*pair))

    for headers, slices in REQUESTS:
        response = await served.client.get(served.url, headers=headers)
        assert _outcome(response.status_code, response.headers["content-type"], response.content, slices) == "real"
        assert response.headers["etag"] == etag
        _exchange(*pair)


# --- no descriptor outlives its response -----------------------------------------------------------------


def _open_descriptors_of(path: Path) -> list[int]:
    target = os.stat(path)
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, or one closed meanwhile
            st = os.stat(f"/proc/self/fd/{name}")
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                found.append(int(name))
    return found


async def test_no_descriptor_is_left_open_after_any_answer(served: Served, monkeypatch: pytest.MonkeyPatch):
    big = served.output
    with open(big, "r+b") as fh:  # sparse, and large enough that a body is cut off mid-way
        fh.truncate(64 * 1024 * 1024)
    etag = Validators.of(os.stat(big)).etag
    answered: asyncio.Queue[None] = asyncio.Queue()
    original = MediaResponse.__call__

    async def tracked(self: MediaResponse, scope: Any, receive: Any, send: Any) -> None:
        try:
            await original(self, scope, receive, send)
        finally:
            answered.put_nowait(None)

    monkeypatch.setattr(MediaResponse, "__call__", tracked)
    complete = [
        ("GET", {"Range": "bytes=0-99"}),
        ("GET", {"Range": "bytes=0-9,100-199"}),
        ("HEAD", {}),
        ("GET", {"If-None-Match": etag}),
        ("GET", {"Range": "bytes=99999999-"}),
    ]
    cut_off = [{}, {"Range": "bytes=1-"}, {"Range": "bytes=0-9,1000-"}]  # whole, one range, multipart

    for method, headers in complete:
        assert (await served.client.request(method, served.url, headers=headers)).status_code in (200, 206, 304, 416)
        await asyncio.wait_for(answered.get(), 20)
        assert _open_descriptors_of(big) == [], (method, headers)
    for headers in cut_off:
        async with served.client.stream("GET", served.url, headers=headers) as response:
            async for _ in response.aiter_raw():
                break  # leaving the block closes the connection mid-body
        await asyncio.wait_for(answered.get(), 20)
        assert _open_descriptors_of(big) == [], headers


# --- the race: swaps from another process while requests run ---------------------------------------------

# Exchanges two names until its stdin closes (or ``limit`` swaps); prints "ready" first, the number of swaps last.
SWAPPER = r"""
import ctypes, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
a, b, limit = sys.argv[1].encode(), sys.argv[2].encode(), int(sys.argv[3])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("ready", flush=True)
swaps = 0
while not stop.is_set() and swaps < limit:
    if libc.renameat2(-100, a, -100, b, 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        raise OSError(ctypes.get_errno(), "renameat2")
    swaps += 1
print(swaps, flush=True)
"""
RACE_REQUESTS = 3000
RACE_SECONDS = 6.0
RACE_CLIENTS = 8


@pytest.mark.parametrize("swapped", ["file", "run folder"])
async def test_race_with_symlink_swaps_never_serves_outside_bytes(served: Served, swapped):
    swapper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SWAPPER, *map(str, served.swaps[swapped]), "100000000",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert swapper.stdin is not None and swapper.stdout is not None
    outcomes: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + RACE_SECONDS
    try:
        assert await asyncio.wait_for(swapper.stdout.readline(), 20) == b"ready\n"

        async def client(offset: int) -> None:
            connection = _Connection(served.port)
            try:
                i = offset
                while sum(outcomes.values()) < RACE_REQUESTS and time.monotonic() < deadline:
                    headers, slices = REQUESTS[i % len(REQUESTS)]
                    outcomes[await connection.get(served.url, headers, slices)] += 1
                    i += 1
            finally:
                connection.close()

        await asyncio.gather(*(client(n) for n in range(RACE_CLIENTS)))
    finally:
        swapper.stdin.close()
        out, _ = await asyncio.wait_for(swapper.communicate(), 20)
    swaps = int(out.split()[-1])

    summary = f"{dict(outcomes)} in {sum(outcomes.values())} requests, {swaps} swaps"
    assert set(outcomes) <= {"real", "404"}, summary
    assert outcomes["real"] > 0 and outcomes["404"] > 0 and swaps > 0, summary  # both states were served
