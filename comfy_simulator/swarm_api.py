"""SwarmUI's native API for discovering backends: ``POST /API/GetNewSession`` (``BasicAPIFeatures.cs``)
and ``POST /API/ListBackends`` (``BackendAPI.cs``), with the request rules of ``API.HandleAsyncRequest``
(``src/WebAPI/API.cs``) in their order: method, Content-Type, Content-Length, JSON object, session, route,
permission. Errors of the framework are 400 ``{"error_id", "error"}`` (an unknown session: 401); errors
of a route are 200 ``{"error"}``.

SwarmUI matches ``/API/`` case-insensitively; here only that casing exists, since ``/api/`` is ComfyUI's.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .middleware import SWARM_API_PREFIX
from .settings import SimulatorSettings
from .swarm_backends import SwarmBackend, SwarmBackends

VERSION = "0.9.8.2"  # SwarmUI.csproj of the SwarmUI source the simulator follows
LOCAL_USER = "local"  # SessionHandler.LocalUserID: the user of every request while accounts are off
SESSIONLESS = frozenset({"login", "getnewsession", "registerbasic", "registeroauth"})
# ComfyUIBackendExtension.FeaturesSupported (no optional node packs installed), then "folderslash" for a
# backend whose model lists hold no backslash.
FEATURES = (
    "comfyui",
    "refiners",
    "controlnet",
    "endstepsearly",
    "seamless",
    "video",
    "variation_seed",
    "freeu",
    "yolov8",
    "folderslash",
)
Body = dict[str, Any]


def _framework_error(error_id: str, error: str) -> web.Response:
    return web.json_response({"error_id": error_id, "error": error}, status=400, headers={"Cache-Control": "no-store"})


def _answer(body: Body, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


def _bool_param(body: Body, name: str) -> bool | str:
    """``bool.TryParse`` of the value's text, or the error text of ``APICallReflectBuilder``."""
    value = body.get(name, False)
    text = "" if value is None else value if isinstance(value, str) else json.dumps(value)
    if text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    return f"Invalid value '{text}' for parameter '{name}', must be type 'Boolean'"


def since_text(seconds: int) -> str:
    """``TimeSpan.FromSeconds(-seconds).SimpleFormat(true, false)`` (FreneticUtilities): the two largest
    units, then "ago". Zero is not negative, so it reads "from now"."""
    if seconds == 0:
        return "0 seconds from now"

    def count(value: int, unit: str) -> str:
        return f"{value} {unit}{'' if value == 1 else 's'}"

    units = ((86400, "day", 3600, "hour"), (3600, "hour", 60, "minute"), (60, "minute", 1, "second"))
    for size, unit, small_size, small_unit in units:
        if seconds >= size:
            big, rest = divmod(seconds, size)
            small = rest // small_size
            return count(big, unit) + (f" and {count(small, small_unit)}" if small else "") + " ago"
    return count(seconds, "second") + " ago"


def backend_to_net(backend: SwarmBackend, full: bool) -> Body:
    """``BackendAPI.BackendToNet``, keys in its order."""
    used = backend.last_used
    seconds = 0 if used is None else int(time.monotonic() - used)
    data: Body = {
        "type": backend.type,
        "status": backend.status.value,
        "id": backend.id,
        "settings": backend.settings(),
        "modcount": 0,  # counts EditBackend calls, which the simulator has none of
        "features": list(FEATURES),
        "enabled": backend.enabled,
        "title": backend.title,
        "max_usages": backend.max_usages,
        "seconds_since_used": seconds,
        "time_since_used": "Never" if used is None else since_text(seconds),
        "can_load_models": True,
    }
    if full:
        data["current_model"] = None  # nothing loaded through SwarmUI's own generation path
    return data


class SwarmApi:
    def __init__(self, settings: SimulatorSettings, backends: SwarmBackends) -> None:
        self.settings = settings
        self.backends = backends
        self.sessions: set[str] = set()  # clear it to play sessions that expired
        self.server_id = str(uuid.uuid4())  # Utilities.LoopPreventionID: new on every start
        # route (lower-case) → (handler, permission it needs)
        self.routes: dict[str, tuple[Callable[[Body], Body], str | None]] = {
            "getnewsession": (self.get_new_session, None),
            "listbackends": (self.list_backends, "view_backends_list"),
        }

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", SWARM_API_PREFIX + "{route:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.Response(status=302, headers={"Location": "/Error/NoGetAPI"})
        content_type = request.content_type.lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            return _framework_error("basic_api", "Wrong content type")
        if not request.content_length:
            return _framework_error("basic_api", "bad content length")
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):  # JObject.Parse throws
            return _framework_error("internal_error", "An internal error occurred")
        route = request.match_info["route"].lower()
        if route not in SESSIONLESS:
            refused = self._check_session(request, body)
            if refused is not None:
                return refused
        if route not in self.routes:
            return _framework_error("bad_route", "Unknown API route")
        handler, permission = self.routes[route]
        if permission is not None and not self.settings.swarm_allows(permission):
            return _framework_error("bad_permissions", "You lack permissions for this route.")
        return _answer(handler(body))

    def _check_session(self, request: web.Request, body: Body) -> web.Response | None:
        if "session_id" in body:
            value = body["session_id"]
            session_id = "" if value is None else value if isinstance(value, str) else json.dumps(value)
        elif "X-Session-ID" in request.headers:
            session_id = request.headers["X-Session-ID"]
        else:
            return _framework_error("basic_api", "missing session id")
        if session_id not in self.sessions:
            error = {"error": "Invalid session ID. You may need to refresh the page.", "error_id": "invalid_session_id"}
            return _answer(error, status=401)
        return None

    def get_new_session(self, body: Body) -> Body:
        session_id = secrets.token_hex(20).upper()  # Utilities.SecureRandomHex(40)
        self.sessions.add(session_id)
        return {
            "session_id": session_id,
            "user_id": LOCAL_USER,
            "output_append_user": True,
            "version": VERSION,
            "server_id": self.server_id,
            "permissions": list(self.settings.swarm_permissions),
        }

    def list_backends(self, body: Body) -> Body:
        nonreal, full_data = _bool_param(body, "nonreal"), _bool_param(body, "full_data")
        for value in (nonreal, full_data):
            if isinstance(value, str):
                return {"error": value}
        # every simulated backend is "real" (user-managed), so nonreal changes nothing
        return {str(b.id): backend_to_net(b, bool(full_data)) for _, b in sorted(self.backends.backends.items())}
