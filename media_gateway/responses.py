"""The gateway's responses: JSON errors, and media files with the headers browsers need.

``MediaResponse`` answers GET and HEAD for one resolved output:

* 304 for a matching ``If-None-Match`` (weak comparison) or, without it, ``If-Modified-Since``;
* 416 JSON with ``Content-Range: bytes */size`` when no requested range overlaps the file;
* 206 with ``Content-Range`` for one range (open-ended and suffix forms included), and 206
  ``multipart/byteranges`` for several ranges that stay apart once overlapping and touching ones are
  merged. A Range with another unit, a malformed one, more than 32 ranges, or one under an ``If-Range``
  that does not name this file gets the whole file with 200 (RFC 9110 14.2 lets a server ignore it);
* 200 otherwise.

Bodies are read from the file ``open_output`` opened, never from its path again: a file or run folder
swapped for a symlink after the catalog looked is never followed. A body of up to 1 MiB is read in one
go and sent as one message; a larger one in 1 MiB slices on a worker thread, one slice in memory at a
time whatever the file size. Granian's ``http.response.pathsend`` is not used: granian opens the path
itself, later, on its own task, so the path would be checked and opened in two steps; and as that send
returns before the open, nothing tells when an fd passed as ``/proc/self/fd/<n>`` could be closed.

In front-server mode (``accel_prefix`` set) the 200/206 bodies are nginx's: the response carries
``X-Accel-Redirect: <prefix><run_id>/<file>`` and no body, and nginx serves the file from an internal
location with its own Range and sendfile (``disable_symlinks on``: it follows no symlink either).
Validation, 304 and 416 stay here, from the opened file's stat, so both modes answer alike.
"""

from __future__ import annotations

import dataclasses
import io
import os
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import anyio
import anyio.to_thread
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from comfy_generation.runstore import RunStore, open_run_file
from comfy_generation.runstore.layout import NotARegularFile
from media_gateway.catalog import OutputNotFound, ResolvedOutput
from media_gateway.http_semantics import (
    RangeNotSatisfiable,
    Validators,
    content_range,
    if_range_matches,
    not_modified,
    parse_range,
)

# Outputs are written once, atomically, and never change: caches may keep them forever.
IMMUTABLE = "public, max-age=31536000, immutable"
CHUNK_SIZE = 1024 * 1024  # per worker-thread hop: 64 KiB (Starlette's) costs ~3x the CPU per GiB served
INLINE_READ = 256 * 1024  # bodies up to this are read without a thread hop (README, "Media gateway performance")


def json_error(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}``; errors are never cached (a missing output may appear a moment later)."""
    return JSONResponse({"error": message}, status_code, headers={"Cache-Control": "no-store", **(headers or {})})


def open_output(store: RunStore, output: ResolvedOutput) -> tuple[ResolvedOutput, io.FileIO]:
    """Open the output's file once (blocking): the output with the stat of that open file, and the file.

    Validators and sizes come from this fstat and the body only from this file, so what was checked is
    what is sent. Raises OutputNotFound when the file, or its run folder, is gone or has become a symlink.
    """
    try:
        fd, st = open_run_file(store.run_dir(output.run_id) / output.path.name)  # not output.path: it is resolved
    except (FileNotFoundError, NotADirectoryError, NotARegularFile) as exc:
        problem = f"{output.kind.value} output {output.index} is not available"
        raise OutputNotFound(f"run {output.run_id}: {problem}") from exc
    # A FileIO rather than a bare fd: should the response never run (its task cancelled), the fd still closes.
    return dataclasses.replace(output, stat=st), io.FileIO(fd, "r")


def download_name(output: ResolvedOutput) -> str:
    """The file name offered to browsers: ``<run_id>_<index>.<ext>``, never the stored or backend name."""
    return f"{output.run_id}_{output.index}.{output.ext or output.media_format.ext}"


class MediaResponse(Response):
    """An ASGI response serving one output file (see the module docstring for what it answers)."""

    def __init__(
        self, output: ResolvedOutput, file: io.FileIO, *, attachment: bool = False, accel_prefix: str | None = None
    ) -> None:
        """Serve ``file``, opened by ``open_output`` (which gave ``output`` its stat); closed once answered."""
        # Response.__init__ is not called (as in Starlette's FileResponse): the headers depend on the request.
        self.status_code = 200
        self.background = None
        self.output = output
        self.file = file
        self.accel_prefix = accel_prefix
        self.validators = Validators.of(output.stat)
        disposition = "attachment" if attachment else "inline"
        self.media_headers: dict[str, str] = {
            "content-type": output.media_format.mime,  # from runstore's table, never the platform's mimetypes
            "accept-ranges": "bytes",
            "etag": self.validators.etag,
            "last-modified": self.validators.last_modified,
            "cache-control": IMMUTABLE,
            "x-content-type-options": "nosniff",
            "content-disposition": f'{disposition}; filename="{download_name(output)}"',
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(scope, receive, send)
        finally:
            # No worker thread still reads it: a cancelled anyio.to_thread call waits for its thread.
            self.file.close()

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Headers(scope=scope)
        head = scope["method"] == "HEAD"
        size = self.output.stat.st_size
        if not_modified(self.validators, request.get("if-none-match"), request.get("if-modified-since")):
            await self._start(send, 304, {k: v for k, v in self.media_headers.items() if k != "content-type"}, b"")
            return
        ranges = None
        if if_range_matches(self.validators, request.get("if-range")):
            try:
                ranges = parse_range(request.get("range"), size)
            except RangeNotSatisfiable:
                await json_error(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})(
                    scope, receive, send
                )
                return
        if self.accel_prefix is not None:
            # nginx adds its own Accept-Ranges (and ETag, Last-Modified, Content-Length from the file).
            headers = {k: v for k, v in self.media_headers.items() if k != "accept-ranges"}
            await self._start(send, 200, {**headers, "x-accel-redirect": self._accel_path()}, b"")
        elif ranges is None:
            parts = [(b"", 0, size - 1)] if size else []
            await self._stream(scope, receive, send, 200, self.media_headers, head, parts, b"")
        elif len(ranges) == 1:
            first, last = ranges[0]
            headers = {**self.media_headers, "content-range": content_range(first, last, size)}
            await self._stream(scope, receive, send, 206, headers, head, [(b"", first, last)], b"")
        else:
            await self._send_multipart(scope, receive, send, head, ranges)

    def _accel_path(self) -> str:
        assert self.accel_prefix is not None
        return f"{self.accel_prefix}{self.output.run_id}/{quote(self.output.path.name)}"

    async def _start(self, send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
        """A response with a fixed body: a 304 (no Content-Length: it would describe the file) or an
        ``X-Accel-Redirect`` handing the body to nginx (Content-Length 0: nginx sets the file's)."""
        if status != 304:
            headers = {**headers, "content-length": str(len(body))}
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_multipart(
        self, scope: Scope, receive: Receive, send: Send, head: bool, ranges: list[tuple[int, int]]
    ) -> None:
        size = self.output.stat.st_size
        boundary = secrets.token_hex(16)
        mime = self.media_headers["content-type"]
        parts = [
            (
                f"--{boundary}\r\nContent-Type: {mime}\r\nContent-Range: {content_range(a, b, size)}\r\n\r\n".encode(),
                a,
                b,
            )
            for a, b in ranges
        ]
        headers = {**self.media_headers, "content-type": f"multipart/byteranges; boundary={boundary}"}
        await self._stream(scope, receive, send, 206, headers, head, parts, f"--{boundary}--\r\n".encode(), b"\r\n")

    async def _stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        headers: dict[str, str],
        head: bool,
        parts: list[tuple[bytes, int, int]],
        trailer: bytes,
        part_end: bytes = b"",
    ) -> None:
        """Send ``parts`` (a preamble, then the file's bytes first..last inclusive, then ``part_end``) and
        ``trailer``, with an exact Content-Length; a HEAD sends the same headers and no body."""
        length = sum(len(pre) + last - first + 1 + len(part_end) for pre, first, last in parts) + len(trailer)
        raw = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in {**headers, "content-length": str(length)}.items()
        ]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        if head or length == 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        fd = self.file.fileno()
        if length <= INLINE_READ:
            # Read on the event loop: a page-cache read this small costs less than the worker-thread hop.
            await send(
                {"type": "http.response.body", "body": _read_body(fd, parts, trailer, part_end), "more_body": False}
            )
            return
        if length <= CHUNK_SIZE:  # one read, one message: nothing to stop early, so no disconnect watcher
            whole = await anyio.to_thread.run_sync(_read_body, fd, parts, trailer, part_end)
            await send({"type": "http.response.body", "body": whole, "more_body": False})
            return

        async def body() -> None:
            for pre, first, last in parts:
                if pre:
                    await send({"type": "http.response.body", "body": pre, "more_body": True})
                await _send_slice(send, fd, first, last)
                if part_end:
                    await send({"type": "http.response.body", "body": part_end, "more_body": True})
            await send({"type": "http.response.body", "body": trailer, "more_body": False})

        await _until_disconnect(scope, receive, body)


def _read(fd: int, first: int, last: int) -> bytes:
    """Bytes first..last (inclusive) of the file."""
    data = os.pread(fd, last - first + 1, first)
    if len(data) != last - first + 1:
        raise RuntimeError("output file shrank while it was being sent")  # never expected: outputs are immutable
    return data


def _read_body(fd: int, parts: list[tuple[bytes, int, int]], trailer: bytes, part_end: bytes) -> bytes:
    return b"".join(pre + _read(fd, first, last) + part_end for pre, first, last in parts) + trailer


async def _send_slice(send: Send, fd: int, first: int, last: int) -> None:
    for offset in range(first, last + 1, CHUNK_SIZE):
        chunk = await anyio.to_thread.run_sync(_read, fd, offset, min(offset + CHUNK_SIZE, last + 1) - 1)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _until_disconnect(scope: Scope, receive: Receive, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body``, stopping it when the client goes away.

    Servers speaking ASGI 2.4+ raise from ``send`` once the client is gone; older ones (uvicorn, granian
    today) drop the bytes silently, so a listener for ``http.disconnect`` stops the read loop instead of
    letting it read the rest of a large file for nobody.
    """
    spec = tuple(int(p) for p in scope.get("asgi", {}).get("spec_version", "2.0").split("."))
    if spec >= (2, 4):
        await body()
        return
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            message: Message = {}
            while message.get("type") != "http.disconnect":
                message = await receive()
            group.cancel_scope.cancel()

        async def run() -> None:
            await body()
            group.cancel_scope.cancel()

        group.start_soon(watch)
        group.start_soon(run)
