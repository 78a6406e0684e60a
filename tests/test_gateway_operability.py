"""Operating the gateway over real HTTP: liveness and readiness, Prometheus metrics of real requests,
signed expiring URLs (every refusal and acceptance), JSON logs of a real ``python -m media_gateway``."""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from comfy_generation.runstore import sign_media_path, signed_media_url
from gateway_helpers import mp3_bytes, png_bytes, write_run
from media_gateway.serve import running_gateway, running_granian
from media_gateway.settings import Settings
from media_gateway.sign import main as sign_main

SECRET = "gateway-test-secret"
REPO = Path(__file__).resolve().parent.parent
SERVERS = {"uvicorn": running_gateway, "granian": running_granian}


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def sign(path: str, expires: int | None = None) -> str:
    return signed_media_url(path, SECRET, int(time.time()) + 300 if expires is None else expires)


@pytest.fixture
async def signed(runs_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running_gateway(Settings(runs_dir=runs_dir, listen="127.0.0.1:0", signing_secret=SECRET)) as gateway:
        async with httpx.AsyncClient(base_url=gateway.base_url) as client:
            yield client


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    return str(response.json()["error"])


# --- health ----------------------------------------------------------------------------------------------


async def test_readyz_follows_run_storage(runs_dir: Path):
    async with running_gateway(Settings(runs_dir=runs_dir, listen="127.0.0.1:0")) as gateway:
        async with httpx.AsyncClient(base_url=gateway.base_url) as client:
            ready = await client.get("/readyz")
            runs_dir.rename(runs_dir.with_name("moved"))  # tests run as root: chmod would not stop a read
            moved = await client.get("/readyz")
            alive = await client.get("/healthz")
            runs_dir.with_name("moved").rename(runs_dir)
            back = await client.get("/readyz")
            shutil.rmtree(runs_dir)
            runs_dir.write_text("not a directory")
            replaced = await client.get("/readyz")

    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})  # liveness does not depend on storage
    assert (back.status_code, back.json()) == (200, {"status": "ready"})
    for response in (moved, replaced):
        assert response.status_code == 503 and response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        assert response.json()["status"] == "unavailable"
        assert response.json()["error"].startswith("run storage cannot be listed: ")
    assert "No such file" in moved.json()["error"] and "Not a directory" in replaced.json()["error"]


# --- metrics ---------------------------------------------------------------------------------------------


def samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.mark.parametrize("server", list(SERVERS))
async def test_metrics_count_real_requests(runs_dir: Path, server: str):
    image, audio = png_bytes(), mp3_bytes()
    run_id = write_run(runs_dir, [(image, "a.png"), (audio, "b.mp3")])
    settings = Settings(runs_dir=runs_dir, listen="127.0.0.1:0", signing_secret=SECRET)
    async with SERVERS[server](settings) as gateway, httpx.AsyncClient(base_url=gateway.base_url) as client:
        image_url, audio_url = sign(f"/api/media/image/{run_id}/0"), sign(f"/api/media/music/{run_id}/0")
        whole = await client.get(image_url)  # 200
        ranged = await client.get(audio_url, headers={"Range": "bytes=10-109"})  # 206
        cached = await client.get(image_url, headers={"If-None-Match": whole.headers["etag"]})  # 304
        head = await client.head(audio_url)  # 200 without a body
        missing = await client.get(sign(f"/api/media/video/{run_id}/0"))  # 404
        refused = await client.get(f"/api/media/image/{run_id}/0")  # 403
        page = await client.get(sign(f"/runs/{run_id}"))
        await client.get("/readyz")
        text = (await client.get("/metrics")).text
        after = (await client.get("/metrics")).text

    assert [r.status_code for r in (whole, ranged, cached, head, missing, refused, page)] == [
        200,
        206,
        304,
        200,
        404,
        403,
        200,
    ]
    found = samples(text)
    count = 'media_gateway_requests_total{endpoint="%s",media_type="%s",status="%s"}'
    assert found[count % ("media", "image", "200")] == 1
    assert found[count % ("media", "image", "304")] == 1
    assert found[count % ("media", "image", "403")] == 1
    assert found[count % ("media", "audio", "206")] == 1  # music counts as audio
    assert found[count % ("media", "audio", "200")] == 1  # the HEAD
    assert found[count % ("media", "video", "404")] == 1
    assert found[count % ("page", "", "200")] == 1
    assert found[count % ("readyz", "", "200")] == 1
    body_bytes = 'media_gateway_response_body_bytes_total{endpoint="%s",media_type="%s"}'
    assert found[body_bytes % ("media", "image")] == len(image) + len(cached.content) + len(refused.content)
    assert found[body_bytes % ("media", "audio")] == 100  # the 206's body; the HEAD sent none
    assert found[body_bytes % ("media", "video")] == len(missing.content)
    assert found[body_bytes % ("page", "")] == len(page.content)
    assert cached.content == b""
    assert found['media_gateway_request_duration_seconds_count{endpoint="media"}'] == 6
    assert found['media_gateway_request_duration_seconds_bucket{endpoint="media",le="+Inf"}'] == 6
    assert samples(after)[count % ("metrics", "", "200")] == 1  # the scrape before it, counted once it was sent
    assert "media_gateway_accel_redirects_total" not in found  # no hand-off without front-server mode


async def test_unknown_paths_keep_label_values_bounded(runs_dir: Path):
    async with running_gateway(Settings(runs_dir=runs_dir, listen="127.0.0.1:0")) as gateway:
        async with httpx.AsyncClient(base_url=gateway.base_url) as client:
            for path in ("/nope", "/api/media/sound/x", "/api/media/../../etc", "/wp-admin/x.php"):
                await client.get(path)
            text = (await client.get("/metrics")).text
    assert re.findall(r'endpoint="([^"]*)",media_type="([^"]*)"', text) and all(
        endpoint in {"other", "media"} and media_type == ""
        for endpoint, media_type in re.findall(r'requests_total\{endpoint="([^"]*)",media_type="([^"]*)"', text)
    )


# --- signed URLs -----------------------------------------------------------------------------------------


async def test_every_unsigned_or_badly_signed_request_is_refused(signed: httpx.AsyncClient, runs_dir: Path):
    run_id = write_run(runs_dir, [(png_bytes(), "a.png"), (png_bytes(rgb=(1, 2, 3)), "b.png")])
    path = f"/api/media/image/{run_id}/0"
    expires = int(time.time()) + 300
    sig = sign_media_path(path, SECRET, expires)
    other_run = write_run(runs_dir, [(png_bytes(), "a.png")])
    cases = {
        "": "needs a signature",
        f"?expires={expires}": "needs a signature",
        f"?sig={sig}": "needs a signature",
        f"?expires=&sig={sig}": "needs a signature",
        f"?expires={expires}&sig={sign_media_path(path, 'another-secret', expires)}": "does not match",
        f"?expires={expires + 1}&sig={sig}": "does not match",  # other expires
        f"?expires={expires}&sig={sig[:-1]}0" if not sig.endswith("0") else f"?expires={expires}&sig={sig[:-1]}1": (
            "does not match"  # other sig
        ),
        f"?expires={expires}&sig={sig.upper()}": "does not match",
        f"?expires={expires}&sig=%C3%A9": "does not match",  # non-ASCII
        f"?expires=soon&sig={sig}": "not a Unix time",
        f"?expires=%C2%B2&sig={sig}": "not a Unix time",  # a digit to str.isdigit, not to int()
        f"?expires=-{expires}&sig={sig}": "not a Unix time",
        f"?expires={'9' * 5000}&sig={sig}": "not a Unix time",
    }
    for query, reason in cases.items():
        assert reason in error_of(await signed.get(path + query), 403), query
    elsewhere = {  # a valid signature, presented for another path
        f"/api/media/image/{run_id}/1": "does not match",
        f"/api/media/image/{run_id}": "does not match",
        f"/api/media/music/{run_id}/0": "does not match",
        f"/api/media/image/{other_run}/0": "does not match",
        f"/api/media/info/{run_id}": "does not match",
        f"/runs/{run_id}": "does not match",
        f"/api/media/image/{run_id}/0/": "does not match",
    }
    for other, reason in elsewhere.items():
        assert reason in error_of(await signed.get(f"{other}?expires={expires}&sig={sig}"), 403), other
    past = int(time.time()) - 1
    assert error_of(await signed.get(sign(path, past)), 403) == "this URL has expired"
    head = await signed.head(path)
    assert head.status_code == 403 and head.content == b""
    # Refused before anything else: a malformed run id or unknown type learns nothing without a signature.
    assert "needs a signature" in error_of(await signed.get("/api/media/image/not-a-run"), 403)
    assert "needs a signature" in error_of(await signed.get(f"/api/media/sound/{run_id}"), 403)


async def test_valid_signatures_are_accepted(signed: httpx.AsyncClient, runs_dir: Path):
    second = png_bytes(rgb=(1, 2, 3))
    run_id = write_run(runs_dir, [(png_bytes(), "a.png"), (second, "b.png")])
    url = sign(f"/api/media/image/{run_id}/1")

    whole = await signed.get(url)
    latest = await signed.get(sign(f"/api/media/image/{run_id}"))  # no index: signed as requested
    ranged = await signed.get(url, headers={"Range": "bytes=0-7"})
    head = await signed.head(url)
    download = await signed.get(url + "&download=1")  # not part of what is signed
    download_first = await signed.get(
        f"/api/media/image/{run_id}/1?download=1&" + url.split("?", 1)[1]
    )  # parameter order does not matter
    invalid_run = await signed.get(sign("/api/media/image/not-a-run"))
    health = [await signed.get(p) for p in ("/healthz", "/readyz", "/metrics")]

    assert (whole.status_code, whole.content) == (200, second)
    assert (latest.status_code, latest.content) == (200, second)
    assert (ranged.status_code, ranged.content) == (206, second[:8])
    assert (head.status_code, head.headers["content-length"]) == (200, str(len(second)))
    for response in (download, download_first):
        assert response.content == second
        assert response.headers["content-disposition"] == f'attachment; filename="{run_id}_1.png"'
    assert error_of(invalid_run, 400).startswith("invalid run id")  # signed: the usual checks follow
    assert [r.status_code for r in health] == [200, 200, 200]  # operational endpoints need no signature


async def test_info_and_page_need_a_signature_and_emit_signed_urls(signed: httpx.AsyncClient, runs_dir: Path):
    run_id = write_run(runs_dir, [(png_bytes(), "a.png"), (mp3_bytes(), "b.mp3")])
    page_expires = int(time.time()) + 120  # shorter than the TTL: emitted URLs expire with the page's

    assert "needs a signature" in error_of(await signed.get(f"/api/media/info/{run_id}"), 403)
    assert "needs a signature" in error_of(await signed.get(f"/runs/{run_id}"), 403)
    info = await signed.get(sign(f"/api/media/info/{run_id}", int(time.time()) + 30 * 86400))
    page = await signed.get(sign(f"/runs/{run_id}", page_expires))

    assert info.status_code == 200 and page.status_code == 200
    urls = [o["url"] for o in info.json()["outputs"]]
    assert [u.split("?")[0] for u in urls] == [f"/api/media/image/{run_id}/0", f"/api/media/audio/{run_id}/0"]
    for url in urls:
        expires = int(httpx.URL(url).params["expires"])
        assert expires == pytest.approx(time.time() + 86400, abs=30)  # the TTL setting's default
        assert (await signed.get(url)).status_code == 200
    sources = [html.unescape(s) for s in re.findall(r'src="([^"]+)"', page.text)]
    downloads = [html.unescape(s) for s in re.findall(r'href="([^"]+download=1)"', page.text)]
    assert len(sources) == 2 and len(downloads) == 2
    for url in sources + downloads:
        assert int(httpx.URL(url).params["expires"]) == page_expires
        response = await signed.get(url)
        assert response.status_code == 200
        disposition = "attachment" if url in downloads else "inline"
        assert response.headers["content-disposition"].startswith(disposition)


async def test_signed_url_ttl_setting(runs_dir: Path):
    run_id = write_run(runs_dir, [(png_bytes(), "a.png")])
    settings = Settings(runs_dir=runs_dir, listen="127.0.0.1:0", signing_secret=SECRET, signed_url_ttl_seconds=60)
    async with running_gateway(settings) as gateway, httpx.AsyncClient(base_url=gateway.base_url) as client:
        info = await client.get(sign(f"/api/media/info/{run_id}", int(time.time()) + 3600))
    expires = int(httpx.URL(info.json()["outputs"][0]["url"]).params["expires"])
    assert expires == pytest.approx(time.time() + 60, abs=5)


def test_sign_command_prints_a_url_the_gateway_accepts(capsys: pytest.CaptureFixture[str]):
    environ = {"MEDIA_GATEWAY_SIGNING_SECRET": SECRET, "MEDIA_GATEWAY_SIGNED_URL_TTL_SECONDS": "600"}
    assert sign_main(["https://media.example/runs/00000000-0000-4000-8000-000000000000"], environ) == 0
    url = httpx.URL(capsys.readouterr().out.strip())
    assert url.path == "/runs/00000000-0000-4000-8000-000000000000"
    assert int(url.params["expires"]) == pytest.approx(time.time() + 600, abs=5)
    assert url.params["sig"] == sign_media_path(url.path, SECRET, int(url.params["expires"]))

    assert sign_main(["/runs/x", "--ttl-seconds", "5"], environ) == 0
    assert int(httpx.URL(capsys.readouterr().out.strip()).params["expires"]) == pytest.approx(time.time() + 5, abs=2)
    with pytest.raises(SystemExit):
        sign_main(["/runs/x"], {})
    assert "MEDIA_GATEWAY_SIGNING_SECRET is not set" in capsys.readouterr().err


# --- logs ------------------------------------------------------------------------------------------------


async def test_json_logs_of_a_real_process(runs_dir: Path):
    run_id = write_run(runs_dir, [(png_bytes(), "a.png")])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "media_gateway",
        "--runs-dir",
        str(runs_dir),
        "--listen",
        "127.0.0.1:0",
        env={**os.environ, "MEDIA_GATEWAY_LOG_FORMAT": "json", "PYTHONPATH": str(REPO)},
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[dict[str, object]] = []

    async def next_line() -> dict[str, object]:
        raw = await proc.stderr.readline()  # type: ignore[union-attr]
        assert raw, f"the gateway exited: {lines}"
        entry = json.loads(raw)  # every line is one JSON object
        lines.append(entry)
        return dict(entry)

    try:
        async with asyncio.timeout(30):
            while "listening on" not in str((entry := await next_line())["message"]):
                pass
            base_url = str(entry["message"]).rsplit(" ", 1)[1]
            async with httpx.AsyncClient(base_url=base_url) as client:
                assert (await client.get(f"/api/media/image/{run_id}")).status_code == 200
            while f"/api/media/image/{run_id}" not in str((access := await next_line())["message"]):
                pass
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = await proc.stderr.read()
        await proc.wait()
    assert proc.returncode == 0
    assert access["level"] == "INFO" and access["logger"] == "granian.access" and "time" in access
    assert " 200 " in str(access["message"])  # one access line per request, with its status
    # Granian's Rust side may print a panic while its worker thread stops (granian issue #693): not a log line.
    records = [json.loads(line) for line in rest.splitlines() if line.startswith(b"{")]
    assert any(r["message"] == "media gateway stopping" for r in records), rest.decode()
    assert entry["logger"] == "media_gateway.serve" and entry["level"] == "INFO"
