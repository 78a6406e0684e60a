"""The media gateway: a Starlette app serving run outputs from run storage by kind, run id and index."""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections.abc import Callable

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from comfy_generation.runstore import (
    InvalidRunId,
    MediaKind,
    RunRecord,
    RunStore,
    file_signature_problem,
    open_run_file,
    output_url,
    parse_run_id,
    signature_problem,
    signed_media_url,
)
from media_gateway.catalog import OutputNotFound, RecordDamaged, ResolvedOutput, RunCatalog, UrlFor
from media_gateway.live import event_stream
from media_gateway.metrics import Metrics, MetricsMiddleware
from media_gateway.player import render_run_page
from media_gateway.responses import MediaResponse, json_error, open_output
from media_gateway.settings import Settings

logger = logging.getLogger(__name__)

# The ``{type}`` URL segment -> the kind of output it serves. ``music`` is what the original front end
# requests for audio, so it stays an alias.
URL_KINDS: dict[str, MediaKind] = {
    "image": MediaKind.IMAGE,
    "audio": MediaKind.AUDIO,
    "music": MediaKind.AUDIO,
    "video": MediaKind.VIDEO,
    "model": MediaKind.MODEL,
}
_INDEX_RE = re.compile(r"[0-9]{1,9}")
EXPOSED_HEADERS = ["Content-Range", "Accept-Ranges", "Content-Length", "ETag", "Last-Modified", "Content-Disposition"]
_YES = ("1", "true", "yes")
MAX_PREVIEW_BYTES = 4 * 1024 * 1024


def _kind(text: str) -> MediaKind:
    kind = URL_KINDS.get(text)
    if kind is None:
        raise HTTPException(404, f"unknown media type: expected one of {', '.join(URL_KINDS)}")
    return kind


def _run_id(request: Request) -> str:
    try:
        return parse_run_id(request.path_params["run_id"])
    except InvalidRunId as exc:
        raise HTTPException(400, "invalid run id: expected a lowercase hyphenated UUID") from exc


def _index(text: str | None) -> int | None:
    if text is None:
        return None
    if not _INDEX_RE.fullmatch(text):
        raise HTTPException(400, "invalid index: expected a non-negative integer")
    return int(text)


class _Endpoints:
    """Request handlers; every filesystem call (the catalog's, opening an output) runs on a worker thread.

    With a signing secret, every media, info and run-page request needs ``expires`` and ``sig`` parameters
    signed for its exact path (checked before anything else, so an unsigned request learns nothing), and
    the info document and the page carry signed media URLs that expire with the request's own signature
    or after ``signed_url_ttl_seconds``, whichever comes first.
    """

    def __init__(self, catalog: RunCatalog, settings: Settings) -> None:
        self.catalog = catalog
        self.accel_prefix = settings.accel_redirect or None
        self.secret = settings.signing_secret
        self.ttl = settings.signed_url_ttl_seconds

    def _check_signature(self, request: Request) -> int | None:
        """The request's ``expires`` when signing is on (403 unless the signature is valid), else None."""
        if not self.secret:
            return None
        expires, sig = request.query_params.get("expires"), request.query_params.get("sig")
        problem = signature_problem(request.scope["path"], expires, sig, self.secret, time.time())
        if problem is not None:
            raise HTTPException(403, problem)
        assert expires is not None
        return int(expires)

    def _url_for(self, request_expires: int | None) -> UrlFor:
        """How the info document and the page link outputs: signed (expiring with the request's own
        signature at the latest) when signing is on."""
        expires = int(time.time()) + self.ttl
        if request_expires is not None:
            expires = min(expires, request_expires)

        def url_for(kind: MediaKind, run_id: str, index: int) -> str:
            return output_url("", kind, run_id, index, secret=self.secret, expires=expires)

        return url_for

    async def media(self, request: Request) -> Response:
        self._check_signature(request)
        kind = _kind(request.path_params["kind"])
        run_id = _run_id(request)  # validated before anything touches the filesystem
        index = _index(request.path_params.get("index"))
        return await self._serve(request, kind, run_id, index, None)

    async def file(self, request: Request) -> Response:
        """A file URL (``/files/<type>/<run_id>/<index>/<name>``, what nginx serves itself in front-server
        mode): the same output, answered the same way, when ``name`` is its stored file; only signed."""
        if not self.secret:
            raise HTTPException(404, "file URLs need a signing secret")
        params = request.query_params
        problem = file_signature_problem(
            request.scope["path"], params.get("expires"), params.get("sig"), self.secret, time.time()
        )
        if problem is not None:
            raise HTTPException(403, problem)
        kind = _kind(request.path_params["kind"])
        run_id = _run_id(request)
        index = _index(request.path_params["index"])
        return await self._serve(request, kind, run_id, index, request.path_params["name"])

    async def _serve(
        self, request: Request, kind: MediaKind, run_id: str, index: int | None, name: str | None
    ) -> Response:
        try:
            output, file = await anyio.to_thread.run_sync(self._open_output, run_id, kind, index)
        except OutputNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except RecordDamaged as exc:
            raise HTTPException(422, str(exc)) from exc
        if name is not None and output.path.name != name:
            file.close()
            raise HTTPException(404, f"run {run_id}: {kind.value} output {index} is not {name!r}")
        attachment = request.query_params.get("download", "").lower() in _YES
        return MediaResponse(output, file, attachment=attachment, accel_prefix=self.accel_prefix)

    def _open_output(self, run_id: str, kind: MediaKind, index: int | None) -> tuple[ResolvedOutput, io.FileIO]:
        return open_output(self.catalog.store, self.catalog.find_output(run_id, kind, index))

    async def not_found(self, request: Request) -> Response:
        self._check_signature(request)
        if request.path_params["kind"] != "info":
            _kind(request.path_params["kind"])
        _run_id(request)
        raise HTTPException(404)

    async def info(self, request: Request) -> Response:
        expires = self._check_signature(request)
        run_id = _run_id(request)
        try:
            document = await anyio.to_thread.run_sync(self.catalog.describe, run_id, self._url_for(expires))
        except OutputNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except RecordDamaged as exc:
            raise HTTPException(422, str(exc)) from exc
        return JSONResponse(document, headers={"Cache-Control": "no-cache"})  # status changes while it runs

    async def run_page(self, request: Request) -> Response:
        expires = self._check_signature(request)
        run_id = _run_id(request)
        url_for = self._url_for(expires)
        try:
            document, record = await anyio.to_thread.run_sync(
                lambda: (self.catalog.describe(run_id, url_for), self.catalog.record(run_id))
            )
        except OutputNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except RecordDamaged as exc:
            raise HTTPException(422, str(exc)) from exc
        reason = (
            record.error.message
            if record.error
            else (f"cancelled: {record.cancel_reason}" if record.cancel_reason else None)
        )
        events = self._signed(f"/api/runs/{run_id}/events", expires)
        page = render_run_page(document, error=reason, events_url=events, record=record.to_json())
        return HTMLResponse(page, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def run_events(self, request: Request) -> Response:
        """The run's events as server-sent events (see live.py); ``Last-Event-ID`` resumes after that seq."""
        expires = self._check_signature(request)
        run_id = _run_id(request)
        resume = request.headers.get("last-event-id", "0").strip() or "0"
        if not (resume.isascii() and resume.isdigit()) or len(resume) > 12:
            raise HTTPException(400, "Last-Event-ID must be the seq of an event (a non-negative integer)")
        await self._record(run_id)  # 404 or 422 before the stream starts
        stream = event_stream(
            self.catalog.store,
            run_id,
            int(resume),
            self._url_for(expires),
            self._preview_url(run_id, expires),
            lambda: self._ended(run_id),
        )
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: pass each event on at once
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    def _ended(self, run_id: str) -> bool:
        """Whether the run ended (or its record went away: nothing more will come either way)."""
        try:
            return self.catalog.record(run_id).status.is_terminal
        except (OutputNotFound, RecordDamaged):
            return True

    async def preview(self, request: Request) -> Response:
        """The run's latest preview image, while it has one."""
        self._check_signature(request)
        run_id = _run_id(request)
        found = await anyio.to_thread.run_sync(self._read_preview, run_id)
        if found is None:
            raise HTTPException(404, f"run {run_id} has no preview")
        body, mime = found
        return Response(
            body, media_type=mime, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        )

    def _read_preview(self, run_id: str) -> tuple[bytes, str] | None:
        for name, mime in (("preview.jpg", "image/jpeg"), ("preview.png", "image/png")):
            try:
                fd, _ = open_run_file(self.catalog.store.run_dir(run_id) / name)  # no symlink followed
            except OSError:
                continue
            with os.fdopen(fd, "rb") as fh:
                return fh.read(MAX_PREVIEW_BYTES), mime
        return None

    def _signed(self, path: str, expires: int | None) -> str:
        """A link from a page to another path of the gateway: signed like the page's own URL."""
        if not self.secret:
            return path
        until = min(int(time.time()) + self.ttl, expires) if expires is not None else int(time.time()) + self.ttl
        return signed_media_url(path, self.secret, until)

    def _preview_url(self, run_id: str, expires: int | None) -> Callable[[str, int], str]:
        def url(name: str, version: int) -> str:
            signed = self._signed(f"/api/runs/{run_id}/preview", expires)
            return f"{signed}{'&' if '?' in signed else '?'}v={version}"  # a new URL for each new preview

        return url

    async def _record(self, run_id: str) -> RunRecord:
        try:
            return await anyio.to_thread.run_sync(self.catalog.record, run_id)
        except OutputNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except RecordDamaged as exc:
            raise HTTPException(422, str(exc)) from exc

    async def healthz(self, request: Request) -> Response:
        """The process answers (liveness)."""
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def readyz(self, request: Request) -> Response:
        """Run storage can be listed (readiness): 200, else 503 with the reason."""
        try:
            await anyio.to_thread.run_sync(_probe_dir, self.catalog.store.root)
        except OSError as exc:
            logger.warning("not ready: run storage %s cannot be listed: %s", self.catalog.store.root, exc)
            reason = f"run storage cannot be listed: {exc.strerror or type(exc).__name__}"
            return JSONResponse({"status": "unavailable", "error": reason}, 503, headers={"Cache-Control": "no-store"})
        return JSONResponse({"status": "ready"}, headers={"Cache-Control": "no-store"})


def _probe_dir(path: os.PathLike[str] | str) -> None:
    with os.scandir(path) as entries:  # reads at most one directory block, however many runs there are
        next(entries, None)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_error(exc.status_code, exc.detail, dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after sending this, so uvicorn still logs the traceback; the client never sees it.
    return json_error(500, "internal server error")


def check_runs_dir(runs_dir: os.PathLike[str] | str) -> None:
    """Raise RuntimeError naming the path unless it is a readable, searchable directory."""
    if not os.path.isdir(runs_dir):
        raise RuntimeError(f"media gateway runs dir {os.fspath(runs_dir)!r} does not exist or is not a directory")
    if not os.access(runs_dir, os.R_OK | os.X_OK):
        raise RuntimeError(f"media gateway runs dir {os.fspath(runs_dir)!r} is not readable")


def create_app(settings: Settings) -> Starlette:
    """The gateway app for ``settings``; raises RuntimeError at once when the runs dir is unusable."""
    check_runs_dir(settings.runs_dir)
    endpoints = _Endpoints(RunCatalog(RunStore(settings.runs_dir)), settings)
    metrics = Metrics()
    routes = [
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/readyz", endpoints.readyz, methods=["GET"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        Route("/runs/{run_id}", endpoints.run_page, methods=["GET"]),
        Route("/api/runs/{run_id}/events", endpoints.run_events, methods=["GET"]),
        Route("/api/runs/{run_id}/preview", endpoints.preview, methods=["GET"]),
        Route("/api/media/info/{run_id}", endpoints.info, methods=["GET"]),
        Route("/api/media/{kind}/{run_id}", endpoints.media, methods=["GET"]),  # GET implies HEAD
        Route("/api/media/{kind}/{run_id}/{index}", endpoints.media, methods=["GET"]),
        # Anything deeper (or a trailing slash) still gets its run id checked, so that a decoded ``..%2f``
        # is answered like every other malformed run id.
        Route("/api/media/{kind}/{run_id}/{rest:path}", endpoints.not_found, methods=["GET"]),
        Route("/files/{kind}/{run_id}/{index}/{name}", endpoints.file, methods=["GET"]),
    ]
    # Outermost, so that it sees every answer (CORS preflights, errors) as it leaves.
    media_types = {name: kind.value for name, kind in URL_KINDS.items()}
    middleware = [Middleware(MetricsMiddleware, metrics=metrics, media_types=media_types)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "HEAD"],
                allow_headers=["Range", "If-Range", "If-None-Match", "If-Modified-Since"],
                expose_headers=EXPOSED_HEADERS,
                max_age=600,
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.router.redirect_slashes = False  # a trailing slash is a 404 like any other unknown path, not a redirect
    app.state.catalog = endpoints.catalog
    app.state.metrics = metrics
    logger.info("media gateway serving run storage at %s", settings.runs_dir)
    return app
