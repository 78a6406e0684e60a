"""The simulator's own control routes under ``/sim/`` (no ComfyUI or SwarmUI has them): change SwarmUI's
backends while tests run, from another process too. In-process tests can call ``SwarmBackends`` directly.

- ``GET /sim/backends``: ``{id: entry}``; an entry is ``{id, type, status, enabled, comfy_url}``.
- ``POST /sim/backends`` ``{"id"?, "without_nodes"?: [...], "model_step_seconds"?}``: add a self-started
  backend (a new ComfyUI on a port of its own); answers its entry.
- ``DELETE /sim/backends/{id}``: delete it, as ``DeleteBackend`` does.
- ``POST /sim/backends/{id}/disable`` and ``.../enable``: ``ToggleBackend``.
- ``POST /sim/backends/{id}/restart`` ``{"hold"?: bool}``: ``RestartBackends`` for one id.
- ``DELETE /sim/sessions``: forget every SwarmUI session, as if they had expired.

Action routes answer ``{"changed": bool, "backend": entry}``; an unknown id is 404.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .middleware import ADMIN_PREFIX
from .swarm_api import SwarmApi
from .swarm_backends import SwarmBackend, SwarmBackends


def entry(backend: SwarmBackend) -> dict[str, Any]:
    return {
        "id": backend.id,
        "type": backend.type,
        "status": backend.status.value,
        "enabled": backend.enabled,
        "comfy_url": backend.comfy.url,
    }


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


class Admin:
    def __init__(self, backends: SwarmBackends, swarm_api: SwarmApi) -> None:
        self.backends = backends
        self.swarm_api = swarm_api

    def add_routes(self, app: web.Application) -> None:
        one = ADMIN_PREFIX + "backends/{id:-?[0-9]+}"
        app.router.add_get(ADMIN_PREFIX + "backends", self.list)
        app.router.add_post(ADMIN_PREFIX + "backends", self.add)
        app.router.add_delete(one, self.remove)
        app.router.add_post(one + "/{action:disable|enable|restart}", self.act)
        app.router.add_delete(ADMIN_PREFIX + "sessions", self.forget_sessions)

    def _backend(self, request: web.Request) -> SwarmBackend:
        backend_id = int(request.match_info["id"])
        if backend_id not in self.backends.backends:
            raise web.HTTPNotFound(text=f"no backend {backend_id}")
        return self.backends.get(backend_id)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({str(i): entry(b) for i, b in sorted(self.backends.backends.items())})

    async def add(self, request: web.Request) -> web.Response:
        body = await _body(request)
        overrides: dict[str, Any] = {}
        if "without_nodes" in body:
            overrides["without_nodes"] = frozenset(body["without_nodes"])
        if "model_step_seconds" in body:
            overrides["model_step_seconds"] = float(body["model_step_seconds"])
        try:
            backend = await self.backends.add(body.get("id"), **overrides)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return web.json_response(entry(backend))

    async def remove(self, request: web.Request) -> web.Response:
        backend = self._backend(request)
        changed = await self.backends.remove(backend.id)
        return web.json_response({"changed": changed, "backend": entry(backend)})

    async def act(self, request: web.Request) -> web.Response:
        backend = self._backend(request)
        action = request.match_info["action"]
        if action == "restart":
            changed = await self.backends.restart(backend.id, bool((await _body(request)).get("hold", False)))
        else:
            changed = await self.backends.set_enabled(backend.id, action == "enable")
        return web.json_response({"changed": changed, "backend": entry(backend)})

    async def forget_sessions(self, request: web.Request) -> web.Response:
        self.swarm_api.sessions.clear()
        return web.json_response({})
