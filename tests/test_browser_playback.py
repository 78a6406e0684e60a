"""Playback in a real browser: Debian's headless Chromium, driven over the DevTools protocol, opens the run page.

A run made through the generation service (image, MP3, H.264/AAC MP4) is opened at the gateway's
``/runs/<run_id>``; then the same media is played from a page on another origin against a gateway with
CORS configured. Nothing is downloaded: the browser is the ``chromium`` package (`make test` installs it).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest
from aiohttp import web

from browser_helpers import DevTools
from comfy_generation.runstore import signed_media_url
from comfygen.v1 import generation_pb2 as pb
from media_gateway.player import render_run_page
from media_gateway.serve import running_gateway
from media_gateway.settings import Settings
from stack_helpers import Stack

ALL_KINDS_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 160, "height": 120, "batch_size": 1, "color": 0xFF8000}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "page/image"}},
    "3": {"class_type": "EmptyAudio", "inputs": {"duration": 2.0, "sample_rate": 44100, "channels": 2}},
    "4": {
        "class_type": "SaveAudioMP3",
        "inputs": {"audio": ["3", 0], "filename_prefix": "page/audio", "quality": "128k"},
    },
    "5": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 96, "batch_size": 24, "color": 0xFF8000}},
    "6": {"class_type": "CreateVideo", "inputs": {"images": ["5", 0], "fps": 12.0, "audio": ["3", 0]}},
    "7": {
        "class_type": "SaveVideo",
        "inputs": {"video": ["6", 0], "filename_prefix": "page/video", "format": "auto", "codec": "auto"},
    },
}

# Runs in the page: waits on media events (never on timers) and reports what the elements reached.
PLAYBACK_CHECK = r"""
(async () => {
  const settle = (el, events, done) => new Promise((resolve, reject) => {
    const check = () => { if (done()) { resolve(); } };
    for (const name of events) el.addEventListener(name, check);
    el.addEventListener('error', () => reject(new Error(el.tagName + ' error ' + (el.error && el.error.message))));
    check();
  });
  const pixel = (source, width, height) => {
    const canvas = document.createElement('canvas');
    canvas.width = width; canvas.height = height;
    const context = canvas.getContext('2d');
    context.drawImage(source, 0, 0, width, height);
    return Array.from(context.getImageData(width >> 1, height >> 1, 1, 1).data.slice(0, 3));  // throws if tainted
  };
  const result = {};
  const audio = document.querySelector('section[data-type="audio"] audio');
  audio.preload = 'auto';
  audio.load();
  await settle(audio, ['loadedmetadata', 'progress', 'canplay', 'canplaythrough'], () => audio.readyState >= 4);
  result.audio = {readyState: audio.readyState, duration: audio.duration,
                  seekableEnd: audio.seekable.length ? audio.seekable.end(0) : 0};
  const seeked = new Promise(resolve => audio.addEventListener('seeked', resolve, {once: true}));
  audio.currentTime = audio.duration / 2;
  await seeked;
  result.audio.afterSeek = audio.currentTime;

  const video = document.querySelector('section[data-type="video"] video');
  video.preload = 'auto';
  video.load();
  await settle(video, ['loadeddata', 'canplay', 'canplaythrough'], () => video.readyState >= 2);
  const videoSeeked = new Promise(resolve => video.addEventListener('seeked', resolve, {once: true}));
  video.currentTime = video.duration / 2;
  await videoSeeked;
  await settle(video, ['canplay', 'loadeddata', 'seeked'], () => video.readyState >= 2);
  result.video = {videoWidth: video.videoWidth, videoHeight: video.videoHeight, duration: video.duration,
                  afterSeek: video.currentTime, pixel: pixel(video, video.videoWidth, video.videoHeight)};

  const img = document.querySelector('section[data-type="image"] img');
  await img.decode();
  result.image = {naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
                  pixel: pixel(img, img.naturalWidth, img.naturalHeight)};

  const ranged = await fetch(audio.currentSrc, {headers: {Range: 'bytes=0-99'}});
  result.fetch = {status: ranged.status, contentRange: ranged.headers.get('Content-Range'),
                  etag: ranged.headers.get('ETag'), length: (await ranged.arrayBuffer()).byteLength};
  return result;
})()
"""


async def make_run(stack: Stack) -> str:
    request = pb.RunSpec(workflow_json=json.dumps(ALL_KINDS_WORKFLOW), workflow_name="browser check")
    events = [reply.event async for reply in stack.stub.Generate(pb.GenerateRequest(spec=request))]
    assert events[-1].HasField("completed"), events[-1]
    assert len(events[-1].completed.outputs) == 3
    return events[0].run_id


def assert_played(result: dict[str, Any], info: dict[str, Any]) -> None:
    by_type = {o["type"]: o for o in info["outputs"]}
    audio, video, image = result["audio"], result["video"], result["image"]
    assert audio["readyState"] == 4  # HAVE_ENOUGH_DATA
    assert audio["duration"] == pytest.approx(by_type["audio"]["duration_seconds"], abs=0.1)
    assert audio["seekableEnd"] == pytest.approx(audio["duration"], abs=0.1)  # seekable end to end: Range works
    assert audio["afterSeek"] == pytest.approx(audio["duration"] / 2, abs=0.1)
    assert (video["videoWidth"], video["videoHeight"]) == (by_type["video"]["width"], by_type["video"]["height"])
    assert video["afterSeek"] == pytest.approx(video["duration"] / 2, abs=0.2)
    red, green, blue = video["pixel"]  # a decoded orange frame (H.264 4:2:0 shifts it a little)
    assert red > 200 and 90 < green < 170 and blue < 70, video["pixel"]
    assert (image["naturalWidth"], image["naturalHeight"]) == (160, 120)
    assert image["pixel"] == [255, 128, 0]
    assert result["fetch"]["status"] == 206 and result["fetch"]["length"] == 100
    assert result["fetch"]["contentRange"].startswith("bytes 0-99/")
    assert result["fetch"]["etag"]


def assert_ranges_used(responses: list[dict[str, Any]], run_id: str) -> None:
    media = [r for r in responses if f"/{run_id}/" in r["url"] and "/api/media/" in r["url"]]
    for kind in ("audio", "video"):
        statuses = {r["status"] for r in media if f"/api/media/{kind}/" in r["url"]}
        assert 206 in statuses, (kind, statuses)


async def test_run_page_plays_and_seeks_every_output(stack: Stack, devtools: DevTools):
    run_id = await make_run(stack)
    info = (await stack.http.get(f"/api/media/info/{run_id}")).json()

    session = await devtools.open_page(f"{stack.gateway.base_url}/runs/{run_id}")
    status = await devtools.evaluate(session, "document.getElementById('status').textContent")
    result = await devtools.evaluate(session, PLAYBACK_CHECK)

    assert status == "completed"
    assert_played(result, info)
    assert_ranges_used(devtools.responses(session), run_id)


async def test_playback_from_another_origin_with_cors(stack: Stack, devtools: DevTools):
    run_id = await make_run(stack)
    info = (await stack.http.get(f"/api/media/info/{run_id}")).json()
    pages: dict[str, str] = {}

    async def serve_page(request: web.Request) -> web.Response:
        return web.Response(text=pages["player"], content_type="text/html")

    front_end = web.Application()
    front_end.router.add_get("/player", serve_page)
    runner = web.AppRunner(front_end)
    await runner.setup()
    listener = socket.create_server(("127.0.0.1", 0))
    origin = f"http://127.0.0.1:{listener.getsockname()[1]}"  # another port: another origin
    await web.SockSite(runner, listener).start()
    settings = Settings(runs_dir=stack.runs_dir, listen="127.0.0.1:0", cors_origins=(origin,))
    try:
        async with running_gateway(settings) as gateway:
            pages["player"] = render_run_page(info, media_base=gateway.base_url)  # media on the gateway's origin
            session = await devtools.open_page(f"{origin}/player")
            result = await devtools.evaluate(session, PLAYBACK_CHECK)
            responses = devtools.responses(session)
    finally:
        await runner.cleanup()

    assert_played(result, info)  # canvas reads and the fetch's exposed headers only work with CORS
    assert_ranges_used(responses, run_id)
    media = [r for r in responses if r["url"].startswith(gateway.base_url)]
    assert media and all(r["headers"].get("access-control-allow-origin") == origin for r in media)


async def test_signed_run_page_plays(stack: Stack, devtools: DevTools):
    run_id = await make_run(stack)
    info = (await stack.http.get(f"/api/media/info/{run_id}")).json()
    settings = Settings(runs_dir=stack.runs_dir, listen="127.0.0.1:0", signing_secret="browser-secret")
    async with running_gateway(settings) as gateway:
        page_url = signed_media_url(f"{gateway.base_url}/runs/{run_id}", "browser-secret", int(time.time()) + 300)
        session = await devtools.open_page(page_url)
        result = await devtools.evaluate(session, PLAYBACK_CHECK)
        responses = devtools.responses(session)
        async with httpx.AsyncClient() as http:
            unsigned = await http.get(f"{gateway.base_url}/api/media/audio/{run_id}/0")

    assert_played(result, info)  # every element's source and the Range fetch carried a valid signature
    assert_ranges_used(responses, run_id)
    media = [r for r in responses if "/api/media/" in r["url"]]
    assert media and all("sig=" in r["url"] and r["status"] in (200, 206) for r in media)
    assert unsigned.status_code == 403
