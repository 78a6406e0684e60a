"""The gateway's responses: JSON errors and media files with the headers browsers need."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import FileResponse, JSONResponse, MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from media_gateway.catalog import ResolvedOutput

# Outputs are written once, atomically, and never change: caches may keep them forever.
IMMUTABLE = "public, max-age=31536000, immutable"


def json_error(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}``; errors are never cached (a missing output may appear a moment later)."""
    return JSONResponse({"error": message}, status_code, headers={"Cache-Control": "no-store", **(headers or {})})


class MediaFileResponse(FileResponse):
    """FileResponse (Range -> 206, HEAD, ETag) whose Range errors are JSON like every other error."""

    def __init__(self, output: ResolvedOutput) -> None:
        super().__init__(
            output.path,
            media_type=output.media_format.mime,  # from runstore's table, never the platform's mimetypes
            headers={"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"},
            filename=f"{output.run_id}_{output.index}.{output.ext or output.media_format.ext}",
            stat_result=output.stat,
            content_disposition_type="inline",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = self._range_error(Headers(scope=scope))
        if error is not None:
            await error(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def _range_error(self, headers: Headers) -> JSONResponse | None:
        """The JSON 400/416 for a Range header that FileResponse would answer with plain text, else None."""
        http_range = headers.get("range")
        if_range = headers.get("if-range")
        if http_range is None or self.stat_result is None:
            return None
        if if_range is not None and not self._should_use_range(if_range):
            return None  # a stale If-Range means "send the whole file"
        try:
            self._parse_range_header(http_range, self.stat_result.st_size)
        except MalformedRangeHeader as exc:
            return json_error(400, exc.content)
        except RangeNotSatisfiable as exc:
            return json_error(416, "range not satisfiable", {"Content-Range": f"bytes */{exc.max_size}"})
        return None
