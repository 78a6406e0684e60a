"""HTTP semantics of media responses over real TCP on both servers: validators, 304, ranges, MIME, page, memory."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfy_generation.runstore import new_run_id
from gateway_helpers import (
    mp3_bytes,
    mp4_bytes,
    png_bytes,
    read_metadata,
    write_metadata,
    write_run,
    write_run_as_named,
)
from media_gateway.serve import running_gateway, running_granian
from media_gateway.settings import Settings

SERVERS = {"uvicorn": running_gateway, "granian": running_granian}


@pytest.fixture(params=list(SERVERS))
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    runs = tmp_path / "runs"
    runs.mkdir()
    async with SERVERS[request.param](Settings(runs_dir=runs, listen="127.0.0.1:0")) as gateway:
        async with httpx.AsyncClient(base_url=gateway.base_url) as http:
            http.runs_dir = runs  # type: ignore[attr-defined]
            yield http


def runs_of(client: httpx.AsyncClient) -> Path:
    return client.runs_dir  # type: ignore[attr-defined]


async def _audio(client: httpx.AsyncClient) -> tuple[str, httpx.Response]:
    run_id = write_run(runs_of(client), [(mp3_bytes(), "a.mp3")])
    url = f"/api/media/audio/{run_id}"
    return url, await client.get(url)


# --- validators and 304 -------------------------------------------------------------------------------


async def test_etag_is_strong_and_stable(client: httpx.AsyncClient):
    url, first = await _audio(client)
    second = await client.get(url)

    assert first.headers["etag"] == second.headers["etag"]
    assert first.headers["etag"].startswith('"') and not first.headers["etag"].startswith("W/")


@pytest.mark.parametrize(
    "header",
    [
        lambda etag: {"If-None-Match": etag},
        lambda etag: {"If-None-Match": f'"other", {etag}'},
        lambda etag: {"If-None-Match": f"W/{etag}"},  # If-None-Match compares weakly
        lambda etag: {"If-None-Match": "*"},
    ],
)
async def test_if_none_match_gives_304(client: httpx.AsyncClient, header):
    url, full = await _audio(client)

    for method in ("GET", "HEAD"):
        response = await client.request(method, url, headers=header(full.headers["etag"]))
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["etag"] == full.headers["etag"]
        assert response.headers["cache-control"] == full.headers["cache-control"]


async def test_if_modified_since(client: httpx.AsyncClient):
    url, full = await _audio(client)
    last_modified = full.headers["last-modified"]

    same = await client.get(url, headers={"If-Modified-Since": last_modified})
    later = await client.get(url, headers={"If-Modified-Since": formatdate(4102444800, usegmt=True)})
    earlier = await client.get(url, headers={"If-Modified-Since": formatdate(0, usegmt=True)})
    garbage = await client.get(url, headers={"If-Modified-Since": "yesterday"})
    etag_wins = await client.get(url, headers={"If-None-Match": '"other"', "If-Modified-Since": last_modified})

    assert (same.status_code, later.status_code) == (304, 304)
    for response in (earlier, garbage, etag_wins):
        assert response.status_code == 200 and response.content == mp3_bytes()


async def test_if_range(client: httpx.AsyncClient):
    url, full = await _audio(client)
    etag, date = full.headers["etag"], full.headers["last-modified"]

    by_etag = await client.get(url, headers={"Range": "bytes=0-3", "If-Range": etag})
    by_date = await client.get(url, headers={"Range": "bytes=0-3", "If-Range": date})
    weak = await client.get(url, headers={"Range": "bytes=0-3", "If-Range": f"W/{etag}"})
    other_date = await client.get(url, headers={"Range": "bytes=0-3", "If-Range": formatdate(0, usegmt=True)})

    assert (by_etag.status_code, by_etag.content) == (206, mp3_bytes()[:4])
    assert (by_date.status_code, by_date.content) == (206, mp3_bytes()[:4])
    assert (weak.status_code, weak.content) == (200, mp3_bytes())
    assert (other_date.status_code, other_date.content) == (200, mp3_bytes())


# --- ranges --------------------------------------------------------------------------------------------


def _parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    boundary = response.headers["content-type"].split("boundary=")[1].encode()
    parts = []
    for chunk in response.content.split(b"--" + boundary)[1:-1]:
        head, _, body = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(b": ", 1) for line in head.strip().split(b"\r\n"))
        parts.append((headers[b"Content-Range"].decode(), body[:-2]))  # the CRLF before the next boundary
    return parts


async def test_multiple_ranges_are_multipart_byteranges(client: httpx.AsyncClient):
    url, full = await _audio(client)
    content, size = mp3_bytes(), len(mp3_bytes())

    response = await client.get(url, headers={"Range": "bytes=0-9, 100-149, -5"})

    assert response.status_code == 206
    assert response.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert response.headers["content-length"] == str(len(response.content))
    assert _parts(response) == [
        (f"bytes 0-9/{size}", content[:10]),
        (f"bytes 100-149/{size}", content[100:150]),
        (f"bytes {size - 5}-{size - 1}/{size}", content[-5:]),
    ]
    assert response.content.endswith(b"--\r\n")


async def test_overlapping_ranges_are_merged(client: httpx.AsyncClient):
    url, _ = await _audio(client)

    response = await client.get(url, headers={"Range": "bytes=10-19,0-9,5-14,15-29"})

    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 0-29/{len(mp3_bytes())}"
    assert response.content == mp3_bytes()[:30]


async def test_too_many_ranges_get_the_whole_file(client: httpx.AsyncClient):
    url, _ = await _audio(client)

    response = await client.get(url, headers={"Range": "bytes=" + ",".join(f"{i * 3}-{i * 3}" for i in range(33))})

    assert (response.status_code, response.content) == (200, mp3_bytes())


async def test_range_past_the_end_is_clamped_and_partial_multi_range_is_kept(client: httpx.AsyncClient):
    url, _ = await _audio(client)
    size = len(mp3_bytes())

    clamped = await client.get(url, headers={"Range": f"bytes={size - 3}-{size + 1000}"})
    one_good = await client.get(url, headers={"Range": f"bytes={size + 5}-,0-1"})
    zero_suffix = await client.get(url, headers={"Range": "bytes=-0"})

    assert (clamped.status_code, clamped.content) == (206, mp3_bytes()[-3:])
    assert (one_good.status_code, one_good.content) == (206, mp3_bytes()[:2])
    assert zero_suffix.status_code == 416 and zero_suffix.headers["content-range"] == f"bytes */{size}"


# --- download, MIME table --------------------------------------------------------------------------------


async def test_download_query_makes_an_attachment(client: httpx.AsyncClient):
    run_id = write_run(runs_of(client), [(png_bytes(), "a.png")])

    inline = await client.get(f"/api/media/image/{run_id}?download=0")
    attachment = await client.get(f"/api/media/image/{run_id}/0?download=1")

    assert inline.headers["content-disposition"] == f'inline; filename="{run_id}_0.png"'
    assert attachment.headers["content-disposition"] == f'attachment; filename="{run_id}_0.png"'
    assert attachment.content == png_bytes()


MIME_TABLE = {
    "png": ("image", "image/png"),
    "jpg": ("image", "image/jpeg"),
    "jpeg": ("image", "image/jpeg"),
    "webp": ("image", "image/webp"),
    "gif": ("image", "image/gif"),
    "avif": ("image", "image/avif"),
    "mp3": ("audio", "audio/mpeg"),
    "flac": ("audio", "audio/flac"),
    "wav": ("audio", "audio/wav"),
    "ogg": ("audio", "audio/ogg"),
    "opus": ("audio", "audio/ogg"),
    "m4a": ("audio", "audio/mp4"),
    "aac": ("audio", "audio/aac"),
    "mp4": ("video", "video/mp4"),
    "webm": ("video", "video/webm"),
    "mov": ("video", "video/quicktime"),
    "mkv": ("video", "video/x-matroska"),
    "glb": ("model", "model/gltf-binary"),
    "gltf": ("model", "model/gltf+json"),
}


async def test_every_extension_is_served_with_its_mime_type(client: httpx.AsyncClient):
    root = runs_of(client)
    # The gateway never sniffs what it serves: opaque bytes under each extension.
    run_id = write_run_as_named(
        root, [(kind, ext, b"opaque bytes " + ext.encode()) for ext, (kind, _) in MIME_TABLE.items()]
    )

    info = (await client.get(f"/api/media/info/{run_id}")).json()
    for output, (ext, (kind, mime)) in zip(info["outputs"], MIME_TABLE.items(), strict=True):
        response = await client.get(output["url"])
        assert (output["type"], output["mime"]) == (kind, mime), ext
        assert response.headers["content-type"] == mime, ext
        assert response.content == b"opaque bytes " + ext.encode()
        assert response.headers["x-content-type-options"] == "nosniff"


# --- the run page --------------------------------------------------------------------------------------


async def test_run_page_shows_status_and_every_output(client: httpx.AsyncClient):
    run_id = write_run(runs_of(client), [(png_bytes(), "a.png"), (mp3_bytes(), "b.mp3"), (mp4_bytes(), "c.mp4")])

    page = await client.get(f"/runs/{run_id}")

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    assert f"<code>{run_id}</code>" in html and 'id="status">completed<' in html
    assert f'<img src="/api/media/image/{run_id}/0"' in html
    assert f'src="/api/media/audio/{run_id}/0"></audio>' in html and "<audio controls" in html
    assert f'src="/api/media/video/{run_id}/0"></video>' in html and "<video controls" in html
    assert hashlib.sha256(mp4_bytes()).hexdigest() in html and "32 × 32" in html and "0.500 s" in html


async def test_run_page_of_a_failed_run_escapes_the_message(client: httpx.AsyncClient):
    root = runs_of(client)
    run_id = write_run(root, [], status="failed")
    metadata = read_metadata(root, run_id)
    assert metadata is not None
    metadata["error"] = {"code": "execution_error", "message": "<script>alert(1)</script> node 3 failed"}
    write_metadata(root, run_id, metadata)

    html = (await client.get(f"/runs/{run_id}")).text

    # The page's own script is the only one: the message is text.
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)" in html and "No outputs yet" in html
    assert html.count("<script>") == 1


async def test_run_page_errors(client: httpx.AsyncClient):
    assert (await client.get(f"/runs/{new_run_id()}")).status_code == 404
    for path in ("/runs/..%2e", "/runs/%2e%2e%2fmetadata.json", "/runs/..%5c..%5cetc", "/runs/x%00"):
        bad = await client.get(path)
        assert bad.status_code in (400, 404) and set(bad.json()) == {"error"}, path


# --- memory --------------------------------------------------------------------------------------------


async def test_memory_per_response_is_bounded_whatever_the_file_size(client: httpx.AsyncClient):
    root = runs_of(client)
    run_id = write_run(root, [(mp4_bytes(), "v.mp4")])
    path = root / run_id / "02_output_video.mp4"
    size = 192 * 1024 * 1024
    with open(path, "r+b") as fh:  # sparse: costs no disk
        fh.truncate(size)
    os.utime(path)
    url = f"/api/media/video/{run_id}"

    tracemalloc.start()
    try:
        received = 0
        # bytes=1-: a 206 streamed in slices, like every body over 1 MiB
        async with client.stream("GET", url, headers={"Range": "bytes=1-"}) as response:
            assert response.status_code == 206
            async for chunk in response.aiter_raw():
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert received == size - 1
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB body"


# --- property: arbitrary conditional and range headers -------------------------------------------------

_HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip)
_RANGE = st.one_of(
    _HEADER_TEXT,
    st.lists(
        st.tuples(st.one_of(st.none(), st.integers(0, 2000)), st.one_of(st.none(), st.integers(0, 2000))),
        min_size=1,
        max_size=5,
    ).map(
        lambda specs: (
            "bytes=" + ",".join(f"{a if a is not None else ''}-{b if b is not None else ''}" for a, b in specs)
        )
    ),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    range_header=st.one_of(st.none(), _RANGE),
    if_range=st.one_of(st.none(), _HEADER_TEXT, st.just("ETAG")),
    if_none_match=st.one_of(st.none(), _HEADER_TEXT, st.just("ETAG")),
    if_modified_since=st.one_of(st.none(), _HEADER_TEXT, st.just("LAST_MODIFIED")),
    method=st.sampled_from(["GET", "HEAD"]),
)
async def test_arbitrary_headers_get_a_correct_answer(
    client: httpx.AsyncClient, range_header, if_range, if_none_match, if_modified_since, method
):
    url, full = _property_audio(client)
    validators = {"ETAG": (await client.head(url)).headers["etag"], "LAST_MODIFIED": full}
    headers = {
        name: validators.get(value, value)
        for name, value in [
            ("Range", range_header),
            ("If-Range", if_range),
            ("If-None-Match", if_none_match),
            ("If-Modified-Since", if_modified_since),
        ]
        if value is not None
    }
    content, size = mp3_bytes(), len(mp3_bytes())

    response = await client.request(method, url, headers=headers)

    assert response.status_code in (200, 206, 304, 416), (headers, response.status_code, response.text)
    body = b"" if method == "HEAD" else None
    if response.status_code == 200:
        assert response.content == (body if body is not None else content)
    elif response.status_code == 304:
        assert "If-None-Match" in headers or "If-Modified-Since" in headers
    elif response.status_code == 416:
        assert "Range" in headers and response.headers["content-range"] == f"bytes */{size}"
    elif response.headers["content-type"] == "audio/mpeg":
        first, last = (int(n) for n in response.headers["content-range"].split(" ")[1].split("/")[0].split("-"))
        assert response.headers["content-range"].endswith(f"/{size}") and 0 <= first <= last < size
        assert response.content == (body if body is not None else content[first : last + 1])
    else:
        assert response.headers["content-type"].startswith("multipart/byteranges")
        assert method == "HEAD" or len(response.content) == int(response.headers["content-length"])


def _property_audio(client: httpx.AsyncClient) -> tuple[str, str]:
    """One run (reused across examples) and its Last-Modified date."""
    root = runs_of(client)
    marker = root / "property-run"
    if not marker.exists():
        marker.write_text(write_run(root, [(mp3_bytes(), "a.mp3")]))
    run_id = marker.read_text()
    mtime = (root / run_id / "02_output_audio.mp3").stat().st_mtime
    return f"/api/media/audio/{run_id}", formatdate(int(mtime), usegmt=True)
