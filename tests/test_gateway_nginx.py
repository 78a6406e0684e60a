"""Front-server mode: Debian's nginx, run with the shipped deploy/nginx/media-gateway.conf, in front of the gateway."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfy_generation.runstore import MediaKind, format_for_extension, output_url, signed_media_url
from gateway_helpers import mp4_bytes, png_bytes, write_run
from media_gateway.http_semantics import Validators
from media_gateway.metrics import Metrics
from media_gateway.serve import running_gateway
from media_gateway.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "deploy" / "nginx" / "media-gateway.conf"
ORIGIN = "https://app.example"


@dataclass
class Front:
    nginx: httpx.AsyncClient
    gateway: httpx.AsyncClient
    runs_dir: Path
    run_id: str
    metrics: Metrics


def _site_config(gateway_port: int, nginx_port: int, runs_dir: Path, secret: str) -> str:
    """The shipped server block with only the deployment-specific values replaced (each exactly once), as
    compose and docker's nginx image do."""
    text = SHIPPED.read_text()
    for old, new in [
        ("server media-gateway:8081;", f"server 127.0.0.1:{gateway_port};"),
        ("listen 8080;", f"listen 127.0.0.1:{nginx_port};"),
        ("alias /srv/runs/;", f"alias {runs_dir}/;"),
        ("alias /srv/runs/$media_run", f"alias {runs_dir}/$media_run"),
        ("${MEDIA_SIGNING_SECRET}", secret),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def _main_config(tmp: Path, site: Path) -> str:
    temp_paths = "".join(
        f"{name}_temp_path {tmp}/{name};\n" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the test's private tmp folder
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\nerror_log stderr warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{\naccess_log off;\n{temp_paths}include {site};\n}}\n"
    )


@contextlib.asynccontextmanager
async def running_front(tmp_path: Path, **extra: Any) -> AsyncIterator[Front]:
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    run_id = write_run(runs_dir, [(mp4_bytes(), "v.mp4"), (png_bytes(), "a.png")])
    settings = Settings(
        runs_dir=runs_dir, listen="127.0.0.1:0", accel_redirect="/_runs/", cors_origins=(ORIGIN,), **extra
    )
    # nginx takes over a socket that already listens (its NGINX variable, meant for binary upgrades), so
    # port 0 works and connections made before it accepts simply wait in the backlog.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    nginx_port = listener.getsockname()[1]
    async with running_gateway(settings) as gateway:
        site = tmp_path / "site.conf"
        secret = str(extra.get("signing_secret", ""))
        site.write_text(_site_config(gateway.port, nginx_port, runs_dir, secret))
        conf = tmp_path / "nginx.conf"
        conf.write_text(_main_config(tmp_path, site))
        fd = listener.fileno()
        proc = subprocess.Popen(
            ["nginx", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)],
            pass_fds=[fd],
            env={**os.environ, "NGINX": f"{fd};"},
            stderr=subprocess.PIPE,
        )
        listener.close()
        try:
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{nginx_port}") as via_nginx,
                httpx.AsyncClient(base_url=gateway.base_url) as direct,
            ):
                yield Front(via_nginx, direct, runs_dir, run_id, gateway.app.state.metrics)
        finally:
            proc.send_signal(signal.SIGQUIT)  # graceful stop
            _, stderr = proc.communicate(timeout=20)
    assert b"[emerg]" not in stderr and b"[alert]" not in stderr, stderr.decode()


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[Front]:
    async with running_front(tmp_path) as front:
        yield front


def _video(front: Front) -> tuple[str, bytes, os.stat_result]:
    path = front.runs_dir / front.run_id / "02_output_video.mp4"
    return f"/api/media/video/{front.run_id}", path.read_bytes(), path.stat()


async def test_gateway_hands_the_body_to_nginx(front: Front):
    url, _, _ = _video(front)

    direct = await front.gateway.get(url)

    assert direct.status_code == 200
    assert direct.content == b""
    assert direct.headers["x-accel-redirect"] == f"/_runs/{front.run_id}/02_output_video.mp4"


async def test_full_get_through_nginx_has_the_gateway_headers(front: Front):
    url, content, stat = _video(front)

    response = await front.nginx.get(url, headers={"Origin": ORIGIN})

    assert response.status_code == 200
    assert response.content == content
    assert response.headers["server"].startswith("nginx")
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["content-length"] == str(len(content))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"] == f'inline; filename="{front.run_id}_0.mp4"'
    assert response.headers["etag"] == Validators.of(stat).etag  # nginx's ETag = the gateway's
    assert response.headers["last-modified"] == Validators.of(stat).last_modified
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "content-range" in response.headers["access-control-expose-headers"].lower()
    assert "x-accel-redirect" not in response.headers


async def test_ranges_through_nginx(front: Front):
    url, content, _ = _video(front)
    size = len(content)

    single = await front.nginx.get(url, headers={"Range": "bytes=100-199"})
    suffix = await front.nginx.get(url, headers={"Range": "bytes=-10"})
    multi = await front.nginx.get(url, headers={"Range": "bytes=0-9,500-509"})
    head = await front.nginx.head(url, headers={"Range": "bytes=0-"})
    stale = await front.nginx.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'})

    assert (single.status_code, single.content) == (206, content[100:200])
    assert single.headers["content-range"] == f"bytes 100-199/{size}"
    assert (suffix.status_code, suffix.content) == (206, content[-10:])
    assert multi.status_code == 206 and multi.headers["content-type"].startswith("multipart/byteranges")
    assert content[500:510] in multi.content and f"bytes 500-509/{size}".encode() in multi.content
    assert (head.status_code, head.content, head.headers["content-range"]) == (206, b"", f"bytes 0-{size - 1}/{size}")
    assert (stale.status_code, stale.content) == (200, content)


async def test_unsatisfiable_and_conditional_are_answered_by_the_gateway(front: Front):
    url, content, stat = _video(front)
    validators = Validators.of(stat)

    unsatisfiable = await front.nginx.get(url, headers={"Range": f"bytes={len(content)}-"})
    by_etag = await front.nginx.get(url, headers={"If-None-Match": validators.etag})
    by_date = await front.nginx.get(url, headers={"If-Modified-Since": validators.last_modified})

    assert unsatisfiable.status_code == 416
    assert unsatisfiable.json() == {"error": "range not satisfiable"}
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(content)}"
    for response in (by_etag, by_date):
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == validators.etag


async def test_internal_location_is_not_reachable_from_outside(front: Front):
    response = await front.nginx.get(f"/_runs/{front.run_id}/02_output_video.mp4")

    assert response.status_code == 404
    assert not response.content.startswith(b"\x00\x00\x00")


async def test_image_info_and_page_pass_through(front: Front):
    image = await front.nginx.get(f"/api/media/image/{front.run_id}?download=1")
    info = await front.nginx.get(f"/api/media/info/{front.run_id}")
    page = await front.nginx.get(f"/runs/{front.run_id}")
    unknown = await front.nginx.get("/api/media/image/not-a-run")

    assert image.content == png_bytes() and image.headers["content-type"] == "image/png"
    assert image.headers["content-disposition"] == f'attachment; filename="{front.run_id}_0.png"'
    assert {o["sha256"] for o in info.json()["outputs"]} == {
        hashlib.sha256(b).hexdigest() for b in (png_bytes(), mp4_bytes())
    }
    assert page.status_code == 200 and "<video" in page.text
    assert unknown.status_code == 400 and unknown.headers["content-type"] == "application/json"


async def test_metrics_count_the_hand_off_and_are_not_public(front: Front):
    url, content, _ = _video(front)

    through = await front.nginx.get(url, headers={"Range": "bytes=0-99"})
    public = await front.nginx.get("/metrics")
    scraped = await front.gateway.get("/metrics")

    assert (through.status_code, through.content) == (206, content[:100])  # nginx answered the Range itself
    assert public.status_code == 404
    metrics = front.metrics.registry
    assert metrics.get_sample_value("media_gateway_accel_redirects_total", {"media_type": "video"}) == 1
    labels = {"endpoint": "media", "media_type": "video"}
    assert metrics.get_sample_value("media_gateway_requests_total", {**labels, "status": "200"}) == 1
    assert metrics.get_sample_value("media_gateway_response_body_bytes_total", labels) == 0  # nginx sent the body
    assert 'media_gateway_accel_redirects_total{media_type="video"} 1.0' in scraped.text


async def test_signatures_are_checked_before_the_hand_off(tmp_path: Path):
    async with running_front(tmp_path, signing_secret="front-secret") as front:
        url, content, _ = _video(front)
        signed = signed_media_url(f"{url}/0", "front-secret", int(time.time()) + 60)

        unsigned = await front.nginx.get(url)
        forged = await front.nginx.get(signed.replace("sig=", "sig=0"))
        good = await front.nginx.get(signed, headers={"Range": "bytes=10-19"})
        download = await front.nginx.get(signed + "&download=1")

    for refused in (unsigned, forged):
        assert refused.status_code == 403 and refused.headers["content-type"] == "application/json"
        assert "x-accel-redirect" not in refused.headers and not refused.content.startswith(b"\x00\x00")
    assert (good.status_code, good.content) == (206, content[10:20])
    assert download.content == content and download.headers["content-disposition"].startswith("attachment;")


SECRET = "file-secret"


def _file_url(front: Front, kind: MediaKind, index: int, name: str, expires: int | None = None) -> str:
    return output_url(
        "", kind, front.run_id, index, secret=SECRET, expires=expires or int(time.time()) + 60, filename=name
    )


@pytest.fixture
async def signed_front(tmp_path: Path) -> AsyncIterator[Front]:
    async with running_front(tmp_path, signing_secret=SECRET) as front:
        yield front


async def test_file_urls_are_served_by_nginx_with_the_gateway_headers(signed_front: Front):
    front = signed_front
    _, content, stat = _video(front)
    url = _file_url(front, MediaKind.VIDEO, 0, "02_output_video.mp4")
    assert url.startswith(f"/files/video/{front.run_id}/0/02_output_video.mp4?expires=")

    response = await front.nginx.get(url, headers={"Origin": ORIGIN})
    image = await front.nginx.get(_file_url(front, MediaKind.IMAGE, 0, "03_output_image.png") + "&download=1")
    head = await front.nginx.head(url)

    assert response.status_code == 200 and response.content == content
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["content-length"] == str(len(content))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"] == f'inline; filename="{front.run_id}_0.mp4"'
    assert response.headers["etag"] == Validators.of(stat).etag
    assert response.headers["last-modified"] == Validators.of(stat).last_modified
    assert response.headers["access-control-allow-origin"] == "*"
    assert "content-range" in response.headers["access-control-expose-headers"].lower()
    assert image.content == png_bytes() and image.headers["content-type"] == "image/png"
    assert image.headers["content-disposition"] == f'attachment; filename="{front.run_id}_0.png"'
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", str(len(content)))
    assert front.metrics.registry.get_sample_value("media_gateway_accel_redirects_total", {"media_type": "video"}) in (
        None,
        0,
    )  # the gateway never saw them


async def test_file_urls_ranges_and_conditionals_by_nginx(signed_front: Front):
    front = signed_front
    _, content, stat = _video(front)
    url = _file_url(front, MediaKind.VIDEO, 0, "02_output_video.mp4")
    size = len(content)

    single = await front.nginx.get(url, headers={"Range": "bytes=100-199"})
    multi = await front.nginx.get(url, headers={"Range": "bytes=0-9,500-509"})
    unsatisfiable = await front.nginx.get(url, headers={"Range": f"bytes={size}-"})
    cached = await front.nginx.get(url, headers={"If-None-Match": Validators.of(stat).etag})

    assert (single.status_code, single.content) == (206, content[100:200])
    assert single.headers["content-range"] == f"bytes 100-199/{size}"
    assert multi.status_code == 206 and content[500:510] in multi.content
    assert unsatisfiable.status_code == 416 and unsatisfiable.json() == {"error": "range not satisfiable"}
    assert unsatisfiable.headers["content-range"] == f"bytes */{size}"
    assert (cached.status_code, cached.content) == (304, b"")


async def test_file_urls_are_refused_without_a_valid_signature(signed_front: Front):
    front = signed_front
    url = _file_url(front, MediaKind.VIDEO, 0, "02_output_video.mp4")
    expired = _file_url(front, MediaKind.VIDEO, 0, "02_output_video.mp4", expires=int(time.time()) - 1)

    answers = {
        "unsigned": await front.nginx.get(url.split("?")[0]),
        "forged": await front.nginx.get(url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")),
        "other index": await front.nginx.get(url.replace("/0/", "/1/", 1)),
        "expired": await front.nginx.get(expired),
    }

    for name, answer in answers.items():
        assert answer.status_code == 403, name
        assert answer.headers["content-type"] == "application/json" and not answer.content.startswith(b"\x00"), name
        assert answer.headers["cache-control"] == "no-store", name
    assert answers["forged"].json() == {"error": "the signature does not match this URL"}
    assert answers["expired"].json() == {"error": "this URL has expired"}


async def test_file_urls_reach_only_output_files(signed_front: Front):
    front = signed_front
    run = front.runs_dir / front.run_id
    (run / "05_output_video.mp4").symlink_to(run / "02_output_video.mp4")
    names = ["metadata.json", "01_workflow.json", "events.jsonl", "05_output_video.mp4", "..%2fmetadata.json"]

    answers = {n: await front.nginx.get(_file_url(front, MediaKind.VIDEO, 0, n)) for n in names}

    for name, answer in answers.items():
        assert answer.status_code in (400, 403, 404), name
        assert not answer.content.startswith(b"\x00\x00") and b'"run_id"' not in answer.content, name
    assert answers["05_output_video.mp4"].status_code == 404  # a symlink, refused by nginx itself


async def test_file_urls_need_the_secret_in_nginx(front: Front):
    # Without a secret nginx cannot tell a valid URL from a forged one: it refuses every file URL.
    url = output_url("", MediaKind.VIDEO, front.run_id, 0, secret="x", expires=2**31, filename="02_output_video.mp4")

    response = await front.nginx.get(url)

    assert response.status_code == 404 and response.headers["content-type"] == "application/json"


def test_nginx_mime_table_is_runstore_table():
    block = re.search(r"types \{([^}]*)\}", SHIPPED.read_text())
    assert block is not None
    lines = (line.strip().rstrip(";").split() for line in block.group(1).strip().splitlines())
    table = {ext: mime for mime, *exts in lines for ext in exts}
    pattern = re.search(r"\(\?<media_ext>([a-z0-9|]+)\)", SHIPPED.read_text())
    assert pattern is not None
    assert sorted(table) == sorted(pattern.group(1).split("|"))
    for ext, mime in table.items():
        media_format = format_for_extension(ext)
        assert media_format is not None and media_format.mime == mime, ext


async def test_the_gateway_alone_answers_file_urls_as_nginx_does(tmp_path: Path):
    run_id = write_run(tmp_path, [(mp4_bytes(), "v.mp4"), (png_bytes(), "a.png")])
    settings = Settings(runs_dir=tmp_path, listen="127.0.0.1:0", signing_secret=SECRET)
    soon = int(time.time()) + 60
    url = output_url("", MediaKind.VIDEO, run_id, 0, secret=SECRET, expires=soon, filename="02_output_video.mp4")
    other = output_url("", MediaKind.VIDEO, run_id, 0, secret=SECRET, expires=soon, filename="03_output_image.png")
    async with running_gateway(settings) as gateway, httpx.AsyncClient(base_url=gateway.base_url) as client:
        good = await client.get(url, headers={"Range": "bytes=0-9"})
        forged = await client.get(url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB"))
        wrong_file = await client.get(other)
    async with running_gateway(dataclasses.replace(settings, signing_secret="")) as gateway:
        async with httpx.AsyncClient(base_url=gateway.base_url) as client:
            unsigned_gateway = await client.get(url)

    assert (good.status_code, good.content) == (206, mp4_bytes()[:10])
    assert good.headers["content-disposition"] == f'inline; filename="{run_id}_0.mp4"'
    assert forged.status_code == 403 and forged.json() == {"error": "the signature does not match this URL"}
    assert wrong_file.status_code == 404  # validly signed, but not the video output 0
    assert unsigned_gateway.status_code == 404
