"""Damaged or hand-edited run records never make the gateway answer 5xx: media, info and the run page
answer a JSON 404 or 422 naming the problem, on both servers; records over the size limit are not parsed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfy_generation.runstore import MAX_RECORD_BYTES
from gateway_helpers import png_bytes, read_metadata, write_run
from media_gateway.serve import running_gateway, running_granian
from media_gateway.settings import Settings

SERVERS = {"uvicorn": running_gateway, "granian": running_granian}


@pytest.fixture(params=list(SERVERS))
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    runs = tmp_path / "runs"
    runs.mkdir()
    async with SERVERS[request.param](Settings(runs_dir=runs, listen="127.0.0.1:0")) as served:
        async with httpx.AsyncClient(base_url=served.base_url) as client:
            yield client, runs


def _output(record: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in record["entities"] if e["type"] == "output_image")


def _set(path: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(record: dict[str, Any]) -> None:
        path(record)[key] = value

    return edit


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[str], bytes]:
    def make(text: str) -> bytes:
        record = json.loads(text)
        edit(record)
        return json.dumps(record).encode()

    return make


# name -> (how the record's text is made from the service's own record, a word the error must contain)
DAMAGE: dict[str, tuple[Callable[[str], bytes], str]] = {
    "nested too deep": (
        lambda text: text.replace('"params": {}', f'"params": {{"x": {_nested(100_000)}}}').encode(),
        "nested",
    ),
    "sequence 1e999": (lambda text: text.replace('"sequence": 2', '"sequence": 1e999').encode(), "sequence"),
    "NUL in a file name": (_edit(_set(_output, "filename", "02_output_image\0.png")), "filename"),
    "CR/LF in a file name": (_edit(_set(_output, "filename", "02_output\r\nimage.png")), "filename"),
    "non-ASCII file name": (_edit(_set(_output, "filename", "02_öutput_image.png")), "filename"),
    "a path as file name": (_edit(_set(_output, "filename", "../../etc/passwd")), "filename"),
    "string size_bytes": (_edit(_set(lambda r: _output(r)["metadata"], "size_bytes", "12")), "size_bytes"),
    "unknown status": (_edit(_set(lambda r: r, "status", "exploded")), "status"),
    "entities not a list": (_edit(_set(lambda r: r, "entities", {"a": 1})), "entities"),
    "not an object": (lambda text: b"[1, 2, 3]", "JSON object"),
    "not UTF-8": (lambda text: b'{"run_id": "\xff\xfe"}', "JSON"),
    "huge integer": (lambda text: text.replace('"sequence": 2', '"sequence": ' + "9" * 5000).encode(), "JSON"),
}


def _paths(run_id: str) -> list[str]:
    return [
        f"/api/media/image/{run_id}",
        f"/api/media/image/{run_id}/0",
        f"/api/media/info/{run_id}",
        f"/runs/{run_id}",
    ]


def _assert_named_error(response: httpx.Response, word: str) -> None:
    assert response.status_code == 422, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert word in error and "metadata.json" in error and len(error) < 1000


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_a_damaged_record_is_a_json_422_naming_the_problem(
    gateway: tuple[httpx.AsyncClient, Path], damage: str
) -> None:
    client, runs = gateway
    run_id = write_run(runs, [(png_bytes(), "a.png")])
    make, word = DAMAGE[damage]
    text = json.dumps(read_metadata(runs, run_id), indent=2)
    (runs / run_id / "metadata.json").write_bytes(make(text))
    for path in _paths(run_id):
        _assert_named_error(await client.get(path), word)


async def test_a_record_that_is_a_directory_or_a_symlink_is_refused(gateway: tuple[httpx.AsyncClient, Path]) -> None:
    client, runs = gateway
    folder = write_run(runs, [(png_bytes(), "a.png")])
    (runs / folder / "metadata.json").unlink()
    (runs / folder / "metadata.json").mkdir()
    linked = write_run(runs, [(png_bytes(), "a.png")])
    (runs / linked / "metadata.json").unlink()
    (runs / linked / "metadata.json").symlink_to(runs / folder / "01_workflow.json")
    for path in _paths(folder):
        _assert_named_error(await client.get(path), "not a regular file")
    for path in _paths(linked):  # never followed: as if there were no record
        response = await client.get(path)
        assert response.status_code == 404 and "not found" in response.json()["error"]


async def test_a_record_over_the_size_limit_is_refused_without_being_parsed(
    gateway: tuple[httpx.AsyncClient, Path],
) -> None:
    client, runs = gateway
    run_id = write_run(runs, [(png_bytes(), "a.png")])
    record = read_metadata(runs, run_id)
    record["params"] = {"padding": "x" * (40 * 1024 * 1024)}  # 40 MB of valid JSON
    (runs / run_id / "metadata.json").write_text(json.dumps(record))
    assert (runs / run_id / "metadata.json").stat().st_size > MAX_RECORD_BYTES
    for path in _paths(run_id):
        _assert_named_error(await client.get(path), "larger than")
