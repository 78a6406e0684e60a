"""Discovery of SwarmUI's ComfyUI backends, against the simulator playing a SwarmUI with several backends:
listing, credentials and permissions, forgotten sessions, changes while backends come and go, and a
ComfyBackend pinned to a discovered backend."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from comfy_simulator import Simulator, SimulatorSettings, running
from generation_service.comfy_backend import ComfyBackend
from generation_service.errors import BackendProtocolError, BackendUnavailable, DiscoveryRefused
from generation_service.swarm_discovery import (
    Changes,
    SwarmBackend,
    SwarmCredentials,
    SwarmDiscovery,
    list_comfy_backends,
)
from simulator_helpers import TIMEOUT

NO_CREDENTIALS = SwarmCredentials()
SELF_START = "comfyui_selfstart"


def tiny_graph(run: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"discovery/{run}"}},
    }


def running_backend(backend_id: int, title: str = "", kind: str = SELF_START) -> SwarmBackend:
    return SwarmBackend(id=backend_id, title=title, type=kind, status="running", enabled=True)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with running(SimulatorSettings(data_dir=tmp_path, swarm_backends=2)) as sim:
        yield sim


async def sim_control(http: aiohttp.ClientSession, sim: Simulator, method: str, path: str, body: Any = None) -> Any:
    async with http.request(method, f"{sim.comfy_url}/sim/{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def replace_list_backends(sim: Simulator, answer: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[], None]:
    """Make the simulated SwarmUI's ListBackends answer ``answer(body)`` (the request rules, session and
    permission checks stay the simulator's); returns what undoes it."""
    original = sim.swarm_api.routes["listbackends"]
    sim.swarm_api.routes["listbackends"] = (answer, original[1])
    return lambda: sim.swarm_api.routes.__setitem__("listbackends", original)


async def test_lists_the_comfyui_backends_with_ids_titles_and_state(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running(SimulatorSettings(data_dir=tmp_path, swarm_backends=3)) as sim:
        sim.swarm.get(1).title = "GPU one"  # SwarmUI's admin sets titles; the simulator has no route for it
        await sim.swarm.set_enabled(2, False)
        listed = await list_comfy_backends(http, sim.comfy_url + "/", NO_CREDENTIALS)
    assert listed == [
        running_backend(0),
        running_backend(1, "GPU one"),
        SwarmBackend(id=2, title="", type=SELF_START, status="disabled", enabled=False),
    ]
    assert [b.usable for b in listed] == [True, True, False]


async def test_lists_api_by_url_backends(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running(SimulatorSettings(data_dir=tmp_path, backend_ids=(0, 3))) as sim:
        listed = await list_comfy_backends(http, sim.comfy_url, NO_CREDENTIALS)
    assert listed == [running_backend(0, kind="comfyui_api"), running_backend(3, kind="comfyui_api")]


async def test_other_backend_types_and_unknown_fields_are_ignored(
    swarm: Simulator, http: aiohttp.ClientSession
) -> None:
    real = swarm.swarm_api.list_backends

    def newer_swarm(body: dict[str, Any]) -> dict[str, Any]:
        listed = {key: {**entry, "some_new_field": [1, 2]} for key, entry in real(body).items()}
        listed["7"] = {"type": "swarmswarmbackend", "id": 7, "status": "running", "enabled": True, "title": "x"}
        listed["8"] = {"type": "localllama"}  # other types are not read at all
        return listed

    replace_list_backends(swarm, newer_swarm)
    assert await list_comfy_backends(http, swarm.comfy_url, NO_CREDENTIALS) == [running_backend(0), running_backend(1)]


async def test_authorization_header_is_required_when_swarm_sets_one(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = SimulatorSettings(data_dir=tmp_path, swarm_backends=2, swarm_authorization="Bearer s3cret")
    async with running(settings) as sim:
        with pytest.raises(DiscoveryRefused) as missing:
            await list_comfy_backends(http, sim.comfy_url, NO_CREDENTIALS)
        assert "requires an Authorization header" in str(missing.value) and sim.comfy_url in str(missing.value)
        with pytest.raises(DiscoveryRefused) as wrong:
            await list_comfy_backends(http, sim.comfy_url, SwarmCredentials(authorization="Bearer not-the-one"))
        assert "did not accept the Authorization header" in str(wrong.value)
        assert "not-the-one" not in str(wrong.value)
        listed = await list_comfy_backends(http, sim.comfy_url, SwarmCredentials(authorization="Bearer s3cret"))
        assert [b.id for b in listed] == [0, 1]


async def test_a_user_without_view_backends_list_is_refused(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    settings = SimulatorSettings(data_dir=tmp_path, swarm_backends=2, swarm_permissions=("comfy_direct_calls",))
    async with running(settings) as sim:
        with pytest.raises(DiscoveryRefused, match="lacks the view_backends_list permission"):
            await list_comfy_backends(http, sim.comfy_url, NO_CREDENTIALS)


async def test_swarm_token_cookie_is_sent_and_a_refused_login_is_named(http: aiohttp.ClientSession) -> None:
    """The simulator plays no SwarmUI accounts, so this stands in for GetNewSession's account check
    (``WebServer.GetUserFor`` finding no valid ``swarm_token``) on a real HTTP server of its own."""
    seen: list[str | None] = []

    async def get_new_session(request: web.Request) -> web.Response:
        seen.append(request.cookies.get("swarm_token"))
        if request.cookies.get("swarm_token") != "6c6f63616c.tok.valid":
            return web.json_response({"error": "Invalid or unauthorized."})
        return web.json_response({"session_id": "S1"})

    async def list_backends(request: web.Request) -> web.Response:
        return web.json_response({"0": {"type": SELF_START, "id": 0, "status": "running", "enabled": True}})

    app = web.Application()
    app.router.add_post("/API/GetNewSession", get_new_session)
    app.router.add_post("/API/ListBackends", list_backends)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        with pytest.raises(DiscoveryRefused, match="requires an account login: set a swarm_token cookie"):
            await list_comfy_backends(http, url, NO_CREDENTIALS)
        with pytest.raises(DiscoveryRefused, match="did not accept the swarm_token cookie") as refused:
            await list_comfy_backends(http, url, SwarmCredentials(swarm_token="6c6f63616c.tok.old"))
        assert "tok.old" not in str(refused.value)
        assert await list_comfy_backends(http, url, SwarmCredentials(swarm_token="6c6f63616c.tok.valid")) == [
            running_backend(0)
        ]
        assert seen == [None, "6c6f63616c.tok.old", "6c6f63616c.tok.valid"]
    finally:
        await runner.cleanup()


def test_credentials_do_not_show_in_their_repr() -> None:
    credentials = SwarmCredentials(authorization="Bearer hidden-value", swarm_token="hidden-token")
    assert "hidden" not in repr(credentials) and "hidden" not in str(credentials)
    assert repr(credentials) == "SwarmCredentials(authorization=<set>, swarm_token=<set>)"
    assert repr(NO_CREDENTIALS) == "SwarmCredentials(authorization=<unset>, swarm_token=<unset>)"


async def test_unreachable_swarm_names_the_url_but_no_credentials(http: aiohttp.ClientSession) -> None:
    with socket.socket() as s:  # a port nothing listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(BackendUnavailable) as unreachable:
        await list_comfy_backends(http, url, SwarmCredentials(authorization="Bearer topsecret", swarm_token="tok-zz9"))
    assert f"SwarmUI at {url} unreachable (POST /API/GetNewSession)" in str(unreachable.value)
    assert "topsecret" not in str(unreachable.value) and "tok-zz9" not in str(unreachable.value)


async def test_a_plain_comfyui_is_not_taken_for_a_swarm(swarm: Simulator, http: aiohttp.ClientSession) -> None:
    comfy_url = swarm.swarm.get(1).comfy.url  # backend 1's own ComfyUI: no /API/ routes
    with pytest.raises(BackendProtocolError, match="GetNewSession with 404 .*is it a SwarmUI"):
        await list_comfy_backends(http, comfy_url, NO_CREDENTIALS)


@pytest.mark.parametrize(
    "answer",
    [
        {"0": {"type": SELF_START, "id": "0", "status": "running", "enabled": True}},
        {"0": {"type": SELF_START, "id": 0, "enabled": True}},
        {"0": {"type": SELF_START, "id": 0, "status": "running", "enabled": "true"}},
        {"0": [SELF_START]},
        {"error": "Invalid value 'x' for parameter 'nonreal', must be type 'Boolean'"},
    ],
    ids=["id-as-text", "no-status", "enabled-as-text", "entry-not-object", "route-error"],
)
async def test_malformed_listings_are_protocol_errors(
    swarm: Simulator, http: aiohttp.ClientSession, answer: dict[str, Any]
) -> None:
    replace_list_backends(swarm, lambda body: answer)
    with pytest.raises(BackendProtocolError, match="ListBackends"):
        await list_comfy_backends(http, swarm.comfy_url, NO_CREDENTIALS)


async def test_a_forgotten_session_is_replaced_transparently(swarm: Simulator, http: aiohttp.ClientSession) -> None:
    discovery = SwarmDiscovery(http, swarm.comfy_url, NO_CREDENTIALS)
    assert (await discovery.refresh()).added == (running_backend(0), running_backend(1))
    assert await discovery.refresh() == Changes()
    assert len(swarm.swarm_api.sessions) == 1  # one session serves every refresh
    first = set(swarm.swarm_api.sessions)
    await sim_control(http, swarm, "DELETE", "sessions")
    assert await discovery.refresh() == Changes()
    assert len(swarm.swarm_api.sessions) == 1 and swarm.swarm_api.sessions != first


async def test_refresh_reports_added_removed_and_changed_backends(
    swarm: Simulator, http: aiohttp.ClientSession
) -> None:
    discovery = SwarmDiscovery(http, swarm.comfy_url, NO_CREDENTIALS)
    assert await discovery.refresh() == Changes(added=(running_backend(0), running_backend(1)))
    assert not await discovery.refresh()

    await sim_control(http, swarm, "POST", "backends", {})
    assert await discovery.refresh() == Changes(added=(running_backend(2),))

    await sim_control(http, swarm, "POST", "backends/1/disable")
    disabled = SwarmBackend(id=1, title="", type=SELF_START, status="disabled", enabled=False)
    assert await discovery.refresh() == Changes(changed=(disabled,))
    assert not discovery.backends[1].usable
    await sim_control(http, swarm, "POST", "backends/1/enable")
    assert await discovery.refresh() == Changes(changed=(running_backend(1),))

    await sim_control(http, swarm, "POST", "backends/0/restart", {"hold": True})  # held in "loading"
    loading = SwarmBackend(id=0, title="", type=SELF_START, status="loading", enabled=True)
    assert await discovery.refresh() == Changes(changed=(loading,))
    assert not discovery.backends[0].usable
    await sim_control(http, swarm, "POST", "backends/0/restart")
    assert await discovery.refresh() == Changes(changed=(running_backend(0),))

    swarm.swarm.get(2).title = "spare"
    assert await discovery.refresh() == Changes(changed=(running_backend(2, "spare"),))

    await sim_control(http, swarm, "DELETE", "backends/2")
    assert await discovery.refresh() == Changes(removed=(running_backend(2, "spare"),))
    assert dict(discovery.backends) == {0: running_backend(0), 1: running_backend(1)}


async def test_a_failed_refresh_keeps_the_previous_state(swarm: Simulator, http: aiohttp.ClientSession) -> None:
    discovery = SwarmDiscovery(http, swarm.comfy_url, NO_CREDENTIALS)
    await discovery.refresh()
    restore = replace_list_backends(swarm, lambda body: {"error": "broken"})
    with pytest.raises(BackendProtocolError):
        await discovery.refresh()
    assert list(discovery.backends) == [0, 1]
    restore()
    assert not await discovery.refresh()  # nothing was dropped in between, so nothing comes back


class CountedListBackends:
    """The simulator's ListBackends, counting its calls; ``failing`` makes it answer a route error."""

    def __init__(self, sim: Simulator) -> None:
        self.real = sim.swarm_api.list_backends
        self.failing = False
        self.calls = 0
        self._waiters: list[tuple[int, asyncio.Event]] = []

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        for target, event in self._waiters:
            if self.calls >= target:
                event.set()
        return {"error": "Something went wrong"} if self.failing else self.real(body)

    async def more_calls(self, count: int) -> None:
        event = asyncio.Event()
        self._waiters.append((self.calls + count, event))
        await event.wait()


async def test_follow_yields_changes_only_and_outlives_failures(
    swarm: Simulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    listing = CountedListBackends(swarm)
    replace_list_backends(swarm, listing)
    discovery = SwarmDiscovery(http, swarm.comfy_url, NO_CREDENTIALS, interval_s=0.02)
    seen: asyncio.Queue[Changes] = asyncio.Queue()

    async def consume() -> None:
        async for changes in discovery.follow():
            seen.put_nowait(changes)

    caplog.set_level(logging.DEBUG, logger="generation_service.swarm_discovery")
    follower = asyncio.create_task(consume())
    try:
        async with asyncio.timeout(TIMEOUT):
            assert await seen.get() == Changes(added=(running_backend(0), running_backend(1)))
            await listing.more_calls(2)
            assert seen.empty()  # refreshes that change nothing yield nothing
            listing.failing = True
            await listing.more_calls(3)
            listing.failing = False
            await listing.more_calls(2)
            assert seen.empty()  # recovering changed nothing either
            await sim_control(http, swarm, "POST", "backends/1/disable")
            disabled = SwarmBackend(id=1, title="", type=SELF_START, status="disabled", enabled=False)
            assert await seen.get() == Changes(changed=(disabled,))
        assert not follower.done()
    finally:
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # three failures alike: logged once as a warning, then at debug level
    assert "ListBackends failed: Something went wrong" in warnings[0].getMessage()
    assert any("works again" in r.getMessage() for r in caplog.records)


async def test_a_comfy_backend_pinned_to_a_discovered_backend_reaches_only_it(
    swarm: Simulator, http: aiohttp.ClientSession
) -> None:
    discovery = SwarmDiscovery(http, swarm.comfy_url, NO_CREDENTIALS)
    await discovery.refresh()
    target = discovery.backends[1]  # not the first running backend, where unpinned requests go
    backend = ComfyBackend(discovery.proxy_url, backend_id=str(target.id))
    await backend.start()
    try:
        assert await backend.wait_connected(TIMEOUT)
        prompt_id = str(uuid.uuid4())
        sub = backend.subscribe(prompt_id)
        assert await backend.submit(sub, tiny_graph(prompt_id)) == {}
        frames: list[Any] = []
        async with asyncio.timeout(TIMEOUT):
            while not frames or frames[-1] != {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}:
                frames.append(await sub.frames.get())
        # The prompt's events came over the proxied websocket, and SwarmUI sends a prompt to the backend of its
        # client_id's socket: the history below shows the upgrade was pinned too, not only the POST.
        types = [f["type"] for f in frames]
        assert "execution_start" in types and "execution_success" in types
        entry = await backend.history(prompt_id)
        assert entry is not None
    finally:
        await backend.close()
    for backend_id, found in ((1, True), (0, False)):
        async with http.get(f"{swarm.swarm.get(backend_id).comfy.url}/history/{prompt_id}") as resp:
            assert (prompt_id in await resp.json()) is found
