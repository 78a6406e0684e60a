"""The media gateway over real TCP: uvicorn and granian (each test runs on both) on 127.0.0.1:0, an httpx client."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfy_generation.runstore import MAX_RECORD_BYTES, new_run_id, write_text_atomic
from gateway_helpers import glb_bytes, mp3_bytes, mp4_bytes, png_bytes, read_metadata, write_metadata, write_run
from media_gateway.app import create_app
from media_gateway.catalog import RunCatalog
from media_gateway.serve import running_gateway, running_granian
from media_gateway.settings import Settings

IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass
class Gateway:
    client: httpx.AsyncClient
    runs_dir: Path
    catalog: RunCatalog


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


SERVERS = {"uvicorn": running_gateway, "granian": running_granian}


@pytest.fixture(params=list(SERVERS))
async def gw(request: pytest.FixtureRequest, runs_dir: Path) -> AsyncIterator[Gateway]:
    async with SERVERS[request.param](Settings(runs_dir=runs_dir, listen="127.0.0.1:0")) as gateway:
        async with httpx.AsyncClient(base_url=gateway.base_url) as client:
            yield Gateway(client, runs_dir, gateway.app.state.catalog)


def assert_json_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    if response.request.method == "HEAD":
        assert response.content == b""
        return ""
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return str(body["error"])


# --- serving -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url_type", "content", "name", "mime"),
    [
        ("image", png_bytes(), "ComfyUI_00001_.png", "image/png"),
        ("audio", mp3_bytes(), "ACEStep_00001_.mp3", "audio/mpeg"),
        ("music", mp3_bytes(), "ACEStep_00001_.mp3", "audio/mpeg"),
        ("video", mp4_bytes(), "LTX_00001_.mp4", "video/mp4"),
        ("model", glb_bytes(), "mesh_00001_.glb", "model/gltf-binary"),
    ],
)
async def test_serves_each_kind_with_its_headers(gw: Gateway, url_type, content, name, mime):
    run_id = write_run(gw.runs_dir, [(content, name)])

    response = await gw.client.get(f"/api/media/{url_type}/{run_id}")

    assert response.status_code == 200
    assert response.content == content
    ext = name.rsplit(".", 1)[1]
    assert response.headers["content-type"] == mime
    assert response.headers["content-length"] == str(len(content))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["cache-control"] == IMMUTABLE
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"] == f'inline; filename="{run_id}_0.{ext}"'
    assert response.headers["etag"].startswith('"') and "last-modified" in response.headers


async def test_latest_and_indexed_outputs_count_per_kind_in_sequence_order(gw: Gateway):
    first, second, third = png_bytes(rgb=(1, 2, 3)), png_bytes(rgb=(4, 5, 6)), png_bytes(rgb=(7, 8, 9))
    run_id = write_run(gw.runs_dir, [(first, "a.png"), (mp3_bytes(), "b.mp3"), (second, "c.png"), (third, "d.png")])

    latest = await gw.client.get(f"/api/media/image/{run_id}")
    by_index = [await gw.client.get(f"/api/media/image/{run_id}/{i}") for i in range(3)]
    audio = await gw.client.get(f"/api/media/audio/{run_id}/0")

    assert latest.content == third
    assert latest.headers["content-disposition"] == f'inline; filename="{run_id}_2.png"'
    assert [r.content for r in by_index] == [first, second, third]
    assert audio.content == mp3_bytes()
    assert (await gw.client.get(f"/api/media/image/{run_id}/01")).content == second


async def test_head_sends_the_headers_and_no_body(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(mp4_bytes(), "v.mp4")])

    get = await gw.client.get(f"/api/media/video/{run_id}/0")
    head = await gw.client.head(f"/api/media/video/{run_id}/0")

    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "content-length", "accept-ranges", "cache-control", "etag", "content-disposition"):
        assert head.headers[name] == get.headers[name]
    assert head.headers["content-length"] == str(len(mp4_bytes()))


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [("bytes=2-9", 2, 9), ("bytes=0-0", 0, 0), ("bytes=-4", None, None), ("bytes=100-", 100, None)],
)
async def test_range_returns_206_with_exact_bytes(gw: Gateway, range_header, start, end):
    content = mp3_bytes()
    size = len(content)
    if start is None:
        start, end = size - 4, size - 1
    elif end is None:
        end = size - 1
    run_id = write_run(gw.runs_dir, [(content, "a.mp3")])

    response = await gw.client.get(f"/api/media/audio/{run_id}", headers={"Range": range_header})

    assert response.status_code == 206
    assert response.content == content[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.headers["content-type"] == "audio/mpeg"


async def test_head_with_range_is_206_without_body(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])

    response = await gw.client.head(f"/api/media/image/{run_id}", headers={"Range": "bytes=1-3"})

    assert response.status_code == 206
    assert response.content == b""
    assert response.headers["content-range"] == f"bytes 1-3/{len(png_bytes())}"


async def test_unsatisfiable_range_is_416_json(gw: Gateway):
    size = len(png_bytes())
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])

    response = await gw.client.get(f"/api/media/image/{run_id}", headers={"Range": f"bytes={size}-"})

    assert_json_error(response, 416)
    assert response.headers["content-range"] == f"bytes */{size}"


@pytest.mark.parametrize("range_header", ["pages=1-2", "bytes=abc", "bytes=5-2", "bytes=", "bytes=--1", "bytes=1-2-3"])
async def test_malformed_or_foreign_range_is_ignored(gw: Gateway, range_header):
    # RFC 9110 14.2: a server MUST ignore a unit it does not know and MAY ignore an invalid range set.
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])

    response = await gw.client.get(f"/api/media/image/{run_id}", headers={"Range": range_header})

    assert response.status_code == 200
    assert response.content == png_bytes()


async def test_stale_if_range_sends_the_whole_file(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])

    response = await gw.client.get(
        f"/api/media/image/{run_id}", headers={"Range": "bytes=999-", "If-Range": '"not-the-etag"'}
    )

    assert response.status_code == 200
    assert response.content == png_bytes()


# --- errors --------------------------------------------------------------------------------------------


async def test_unknown_run_is_404_json(gw: Gateway):
    assert "not found" in assert_json_error(await gw.client.get(f"/api/media/image/{new_run_id()}"), 404)
    assert_json_error(await gw.client.get(f"/api/media/image/{new_run_id()}/0"), 404)
    assert_json_error(await gw.client.head(f"/api/media/image/{new_run_id()}"), 404)


async def test_run_without_that_kind_is_404_json(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])

    message = assert_json_error(await gw.client.get(f"/api/media/video/{run_id}"), 404)

    assert "no video output" in message


async def test_index_out_of_range_is_404_naming_the_valid_indexes(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png"), (png_bytes(), "b.png")])

    message = assert_json_error(await gw.client.get(f"/api/media/image/{run_id}/2"), 404)

    assert "(0-1)" in message and "2 image output" in message


NON_INTEGER_INDEXES = ["abc", "-1", "1.0", "+1", "1_0", " 1", "0x1", "1e3", "9" * 40, "\u0661"]


async def test_non_integer_index_is_400_json(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])

    for index in NON_INTEGER_INDEXES:
        path = f"/api/media/image/{run_id}/{quote(index, safe='')}"
        assert "invalid index" in assert_json_error(await gw.client.get(path), 400), path


MALFORMED_RUN_IDS = [
    "%2e%2e",
    "..%2f..%2fetc%2fpasswd",
    "..%2f",
    "..%5c..%5cmetadata.json",
    "a%5cb",
    "%00",
    "00000000-0000-4000-8000-000000000000%00",
    "00000000-0000-4000-8000-00000000000",  # one digit short
    "00000000-0000-4000-8000-000000000000" + "0" * 2000,  # over-long
    "00000000-0000-4000-8000-00000000000A",  # upper case is not canonical
    "000000000000400080000000000000000000",  # no hyphens
    "{00000000-0000-4000-8000-000000000000}",
    "%20",
    "metadata.json",
]


async def test_malformed_run_id_is_400_json(gw: Gateway):
    for raw_run_id in MALFORMED_RUN_IDS:
        for path in (
            f"/api/media/image/{raw_run_id}",
            f"/api/media/audio/{raw_run_id}/0",
            f"/api/media/info/{raw_run_id}",
        ):
            assert "invalid run id" in assert_json_error(await gw.client.get(path), 400), path


async def test_unknown_type_unknown_route_and_trailing_slash_are_404_json(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])

    assert "unknown media type" in assert_json_error(await gw.client.get(f"/api/media/file/{run_id}"), 404)
    assert_json_error(await gw.client.get(f"/api/media/metadata.json/{run_id}"), 404)
    assert_json_error(await gw.client.get("/nope"), 404)
    assert_json_error(await gw.client.get(f"/api/media/image/{run_id}/"), 404)
    assert_json_error(await gw.client.get(f"/api/media/image/{run_id}/0/extra"), 404)


async def test_wrong_method_is_405_json(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])

    response = await gw.client.post(f"/api/media/image/{run_id}")

    assert_json_error(response, 405)
    assert "GET" in response.headers["allow"]


# --- nothing outside the run folder --------------------------------------------------------------------


def _retarget_first_image(runs_dir: Path, run_id: str, filename: str) -> None:
    metadata = read_metadata(runs_dir, run_id)
    entity = next(e for e in metadata["entities"] if e["type"] == "output_image")
    entity["filename"] = filename
    write_metadata(runs_dir, run_id, metadata)


@pytest.mark.parametrize("target", ["../{other}/02_output_image.png", "{abs}", "../secret.png", "..", ".", ""])
async def test_entity_filename_pointing_outside_the_run_folder_is_refused(gw: Gateway, target):
    secret = b"\x89PNG\r\n\x1a\nSECRET"
    (gw.runs_dir / "secret.png").write_bytes(secret)
    other = write_run(gw.runs_dir, [(secret, "x.png")])
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])
    _retarget_first_image(gw.runs_dir, run_id, target.format(other=other, abs=gw.runs_dir / "secret.png"))

    for path in (f"/api/media/image/{run_id}", f"/api/media/image/{run_id}/0", f"/api/media/info/{run_id}"):
        response = await gw.client.get(path)
        assert_json_error(response, 422)  # a record the service could not have written: damaged
        assert "filename" in response.json()["error"]
        assert b"SECRET" not in response.content


@pytest.mark.parametrize("outside", ["secret.png", "{other}/02_output_image.png"])
async def test_symlink_out_of_the_run_folder_is_404(gw: Gateway, outside):
    secret = b"\x89PNG\r\n\x1a\nSECRET"
    (gw.runs_dir / "secret.png").write_bytes(secret)
    other = write_run(gw.runs_dir, [(secret, "x.png")])
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])
    link = gw.runs_dir / run_id / "02_output_image.png"
    link.unlink()
    link.symlink_to(gw.runs_dir / outside.format(other=other))

    response = await gw.client.get(f"/api/media/image/{run_id}")

    assert_json_error(response, 404)
    assert b"SECRET" not in response.content


@pytest.mark.parametrize("target", ["outside", "other run"])
async def test_run_folder_that_is_a_symlink_is_404(gw: Gateway, tmp_path: Path, target):
    secret = b"\x89PNG\r\n\x1a\nSECRET"
    other = write_run(gw.runs_dir, [(secret, "x.png")])
    outside = shutil.copytree(gw.runs_dir / other, tmp_path / "outside")  # a complete run, out of run storage
    linked = new_run_id()
    (gw.runs_dir / linked).symlink_to(outside if target == "outside" else gw.runs_dir / other)

    for path in (f"/api/media/image/{linked}", f"/api/media/image/{linked}/0", f"/api/media/info/{linked}"):
        response = await gw.client.get(path)
        assert_json_error(response, 404)
        assert b"SECRET" not in response.content
    page = await gw.client.get(f"/runs/{linked}")
    assert_json_error(page, 404)


async def test_run_folder_replaced_by_a_symlink_after_it_was_served_is_404(gw: Gateway, tmp_path: Path):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])
    for path in (f"/api/media/image/{run_id}", f"/api/media/info/{run_id}", f"/runs/{run_id}"):
        assert (await gw.client.get(path)).status_code == 200  # the record is cached now
    moved = (gw.runs_dir / run_id).rename(tmp_path / run_id)  # same files, same inodes, out of run storage
    (gw.runs_dir / run_id).symlink_to(moved)

    for path in (f"/api/media/image/{run_id}", f"/api/media/info/{run_id}", f"/runs/{run_id}"):
        assert_json_error(await gw.client.get(path), 404)


async def test_oversized_record_is_refused_unread(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])
    path = gw.runs_dir / run_id / "metadata.json"
    padded = path.read_bytes() + b" " * MAX_RECORD_BYTES  # still valid JSON: only its size is wrong
    write_text_atomic(path, padded.decode())

    for url in (f"/api/media/image/{run_id}", f"/api/media/info/{run_id}", f"/runs/{run_id}"):
        assert f"larger than {MAX_RECORD_BYTES} bytes" in assert_json_error(await gw.client.get(url), 422), url
    assert gw.catalog.loads == 0


async def test_output_file_missing_on_disk_is_404(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])
    (gw.runs_dir / run_id / "02_output_image.png").unlink()

    assert "not available" in assert_json_error(await gw.client.get(f"/api/media/image/{run_id}"), 404)


async def test_garbage_metadata_is_422_not_500(gw: Gateway):
    broken = new_run_id()
    (gw.runs_dir / broken).mkdir()
    (gw.runs_dir / broken / "metadata.json").write_bytes(b"{not json")
    odd = new_run_id()
    (gw.runs_dir / odd).mkdir()
    write_metadata(gw.runs_dir, odd, {"entities": [7, {"sequence": "x"}, {"type": "output_image"}]})

    for path in (f"/api/media/image/{broken}", f"/api/media/info/{broken}", f"/runs/{broken}"):
        response = await gw.client.get(path)
        assert_json_error(response, 422)
        assert "not valid JSON" in response.json()["error"]
    for path in (f"/api/media/image/{odd}", f"/api/media/info/{odd}", f"/runs/{odd}"):
        response = await gw.client.get(path)
        assert_json_error(response, 422)
        assert "metadata.json field 'run_id': is missing" in response.json()["error"]


# --- metadata cache ------------------------------------------------------------------------------------


async def test_metadata_is_parsed_once_until_the_file_changes(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(rgb=(1, 1, 1)), "a.png")])
    for _ in range(3):
        assert (await gw.client.get(f"/api/media/image/{run_id}")).status_code == 200
    await gw.client.get(f"/api/media/info/{run_id}")
    assert gw.catalog.loads == 1

    # The generation service appends an output and rewrites metadata.json atomically.
    newer = png_bytes(rgb=(2, 2, 2))
    metadata = read_metadata(gw.runs_dir, run_id)
    (gw.runs_dir / run_id / "03_output_image.png").write_bytes(newer)
    metadata["entities"].append({**metadata["entities"][1], "sequence": 3, "filename": "03_output_image.png"})
    write_metadata(gw.runs_dir, run_id, metadata)

    assert (await gw.client.get(f"/api/media/image/{run_id}")).content == newer
    assert gw.catalog.loads == 2


async def test_same_size_rewrite_is_picked_up(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")], status="queued")
    assert (await gw.client.get(f"/api/media/info/{run_id}")).json()["status"] == "queued"
    path = gw.runs_dir / run_id / "metadata.json"
    before = os.stat(path)
    rewritten = path.read_bytes().replace(b'"queued"', b'"failed"')
    tmp = path.with_name(".metadata.json.tmp")
    tmp.write_bytes(rewritten)
    os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime: only the inode differs
    os.replace(tmp, path)

    assert (await gw.client.get(f"/api/media/info/{run_id}")).json()["status"] == "failed"


async def test_deleted_run_is_404_again(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])
    assert (await gw.client.get(f"/api/media/image/{run_id}")).status_code == 200
    (gw.runs_dir / run_id / "metadata.json").unlink()

    assert_json_error(await gw.client.get(f"/api/media/image/{run_id}"), 404)


# --- info, health, CORS, start-up ----------------------------------------------------------------------


async def test_info_lists_every_served_output(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "img.png"), (mp3_bytes(), "song.mp3"), (png_bytes(), "b.png")])

    response = await gw.client.get(f"/api/media/info/{run_id}")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["run_id"] == run_id and body["status"] == "completed"
    assert [(o["type"], o["index"]) for o in body["outputs"]] == [("image", 0), ("audio", 0), ("image", 1)]
    audio = body["outputs"][1]
    assert audio == {
        "type": "audio",
        "index": 0,
        "url": f"/api/media/audio/{run_id}/0",
        "mime": "audio/mpeg",
        "size_bytes": len(mp3_bytes()),
        "sha256": hashlib.sha256(mp3_bytes()).hexdigest(),
        "node_id": "10",
        "filename": "03_output_audio.mp3",
        "duration_seconds": pytest.approx(0.25, abs=0.03),  # read from the file with PyAV
    }
    assert (body["outputs"][0]["width"], body["outputs"][0]["height"]) == (4, 3)
    assert "duration_seconds" not in body["outputs"][0]
    for output in body["outputs"]:
        served = await gw.client.get(output["url"])
        assert served.headers["content-type"] == output["mime"]
        assert hashlib.sha256(served.content).hexdigest() == output["sha256"]


async def test_info_errors(gw: Gateway):
    assert_json_error(await gw.client.get(f"/api/media/info/{new_run_id()}"), 404)
    assert_json_error(await gw.client.get("/api/media/info/nope"), 400)


async def test_healthz(gw: Gateway):
    response = await gw.client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_no_cors_headers_unless_configured(gw: Gateway):
    run_id = write_run(gw.runs_dir, [(png_bytes(), "a.png")])

    response = await gw.client.get(f"/api/media/image/{run_id}", headers={"Origin": "https://app.example"})

    assert "access-control-allow-origin" not in response.headers


async def test_cors_when_configured(runs_dir: Path):
    run_id = write_run(runs_dir, [(mp3_bytes(), "a.mp3")])
    settings = Settings(runs_dir=runs_dir, listen="127.0.0.1:0", cors_origins=("https://app.example",))
    async with running_gateway(settings) as gateway, httpx.AsyncClient(base_url=gateway.base_url) as client:
        url = f"/api/media/audio/{run_id}"
        allowed = await client.get(url, headers={"Origin": "https://app.example", "Range": "bytes=0-1"})
        preflight = await client.options(
            url,
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "range",
            },
        )
        other = await client.get(url, headers={"Origin": "https://evil.example"})

    assert allowed.status_code == 206
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    exposed = {h.strip().lower() for h in allowed.headers["access-control-expose-headers"].split(",")}
    assert {"content-range", "accept-ranges", "content-length", "etag"} <= exposed
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "range" in preflight.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in other.headers


async def test_start_up_fails_loudly_without_a_runs_dir(tmp_path: Path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(RuntimeError, match="no-such-dir"):
        create_app(Settings(runs_dir=missing))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RuntimeError, match="a-file"):
        async with running_gateway(Settings(runs_dir=tmp_path / "a-file", listen="127.0.0.1:0")):
            pass


async def test_start_up_fails_loudly_when_the_port_is_taken(runs_dir: Path):
    async with running_gateway(Settings(runs_dir=runs_dir, listen="127.0.0.1:0")) as first:
        with pytest.raises(RuntimeError, match="could not listen"):
            async with running_gateway(Settings(runs_dir=runs_dir, listen=f"127.0.0.1:{first.port}")):
                pass


# --- property: arbitrary path segments -----------------------------------------------------------------

_SEGMENTS = st.one_of(
    st.sampled_from(["image", "audio", "music", "video", "model", "info", "file", "0", "1", "2", "-1", ".", ".."]),
    st.sampled_from(["%2e%2e", "..%2f", "%00", "%5c", "metadata.json", "02_output_image.png", ""]),
    st.text(max_size=40).map(lambda s: quote(s, safe="")),
    st.text(alphabet="0123456789abcdef-./\\%", max_size=40),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from(["/api/media/", "/runs/"]),
    segments=st.lists(st.one_of(_SEGMENTS, st.just("RUN")), min_size=1, max_size=5),
)
async def test_arbitrary_paths_are_json_errors_or_listed_files(gw: Gateway, prefix, segments):
    run_id = _property_run(gw.runs_dir)
    listed = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (gw.runs_dir / run_id).glob("0[2-9]_output_*")}
    path = prefix + "/".join(run_id if s == "RUN" else s for s in segments)

    response = await gw.client.get(path)

    assert response.status_code in (200, 400, 404), (path, response.status_code, response.text)
    if response.status_code == 200:
        if response.headers["content-type"].startswith("text/html"):
            # the run page (httpx resolves dot segments before sending: compare what was requested)
            assert response.request.url.path == f"/runs/{run_id}" and run_id in response.text
        elif response.headers["content-type"] == "application/json":
            assert response.json()["run_id"] == run_id  # the info document
        else:
            assert hashlib.sha256(response.content).hexdigest() in listed
            assert response.headers["x-content-type-options"] == "nosniff"
    else:
        assert_json_error(response, response.status_code)
        assert b"SECRET" not in response.content


def _property_run(runs_dir: Path) -> str:
    """One run (reused across examples) with an image and audio output, and a secret beside it."""
    marker = runs_dir / "property-run"
    if marker.exists():
        return marker.read_text()
    (runs_dir / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\nSECRET")
    run_id = write_run(runs_dir, [(png_bytes(), "a.png"), (mp3_bytes(), "b.mp3")])
    marker.write_text(run_id)
    return run_id


async def test_unexpected_failure_is_500_json_without_traceback(gw: Gateway, monkeypatch: pytest.MonkeyPatch):
    def explode(*args: object) -> None:
        raise OSError("disk on fire at /secret/path")

    monkeypatch.setattr(gw.catalog, "find_output", explode)

    response = await gw.client.get(f"/api/media/image/{new_run_id()}")

    assert assert_json_error(response, 500) == "internal server error"
    assert b"secret" not in response.content
