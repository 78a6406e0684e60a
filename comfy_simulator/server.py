"""ComfyUI 0.3.64's HTTP API (``server.PromptServer`` routes), registered at ``/x`` and ``/api/x``."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import uuid
from typing import Any

from aiohttp import web

from .executor import Executor
from .faults import Faults
from .messaging import Messenger
from .middleware import Handler
from .nodes import NodeDef, node_classes
from .paths import Folders, content_type_for, upload_target
from .prompt_queue import PromptQueue
from .settings import SimulatorSettings
from .validation import validate_prompt

log = logging.getLogger(__name__)
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def _ram() -> tuple[int, int]:
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh.read().splitlines() if ":" in line)
        return int(info["MemTotal"].split()[0]) * 1024, int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0, 0


class ComfyApi:
    """The routes of one ComfyUI. Its process state (websockets, queue and history, executor) is
    ``attach``ed on every (re)start, so the routes, registered once, always reach the current process."""

    messenger: Messenger
    queue: PromptQueue
    executor: Executor

    def __init__(self, settings: SimulatorSettings, faults: Faults, folders: Folders) -> None:
        self.settings = settings
        self.faults = faults
        self.folders = folders
        self.number = 0

    def attach(self, messenger: Messenger, queue: PromptQueue, executor: Executor) -> None:
        self.messenger, self.queue, self.executor = messenger, queue, executor
        self.number = 0

    def nodes(self) -> dict[str, NodeDef]:
        return node_classes(self.settings.without_nodes)

    def features(self) -> dict[str, Any]:
        return {
            "supports_preview_metadata": self.settings.preview_metadata,
            "max_upload_size": self.settings.max_upload_size,
        }

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.queue_remaining()}}

    def add_routes(self, app: web.Application) -> None:
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/ws", self.websocket),
            ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_item),
            ("POST", "/history", self.post_history),
            ("GET", "/view", self.view),
            ("POST", "/interrupt", self.interrupt),
            ("POST", "/free", self.free),
            ("POST", "/upload/image", self.upload_image),
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/features", self.get_features),
            ("GET", "/object_info", self.object_info),
            ("GET", "/object_info/{node_class}", self.object_info_one),
            ("GET", "/embeddings", self.empty_list),
            ("GET", "/extensions", self.empty_list),
        ]
        for prefix in ("", "/api"):
            for method, path, handler in routes:
                if method == "GET":  # like RouteTableDef.get: HEAD is answered too
                    app.router.add_get(prefix + path, handler)
                else:
                    app.router.add_route(method, prefix + path, handler)
        app.router.add_get("/", self.index)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        return await self.messenger.websocket_handler(request)

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text="<!DOCTYPE html><title>ComfyUI (simulator)</title>", content_type="text/html")

    async def empty_list(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        json_data = await request.json()  # not JSON → aiohttp's 500 page, as in ComfyUI
        if "number" in json_data:
            number: Any = float(json_data["number"])
        else:
            number = self.number
            if json_data.get("front"):
                number = -number
            self.number += 1
        if "prompt" not in json_data:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        valid, error_info, outputs, node_errors = validate_prompt(
            prompt, json_data.get("partial_execution_targets"), self.folders, self.nodes()
        )
        extra_data = dict(json_data.get("extra_data", {}))
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid:
            log.warning("invalid prompt: %s", error_info)
            return web.json_response({"error": error_info, "node_errors": node_errors}, status=400)
        sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
        self.queue.put((number, prompt_id, prompt, extra_data, outputs, sensitive))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def get_queue(self, request: web.Request) -> web.Response:
        running, pending = self.queue.current_queue()
        return web.json_response(
            {"queue_running": [list(x[:5]) for x in running], "queue_pending": [list(x[:5]) for x in pending]}
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("clear"):
            self.queue.wipe_queue()
        for prompt_id in json_data.get("delete", []):
            self.queue.delete_queue_item(prompt_id)
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        max_items = request.rel_url.query.get("max_items")
        offset = request.rel_url.query.get("offset")
        return web.json_response(
            self.queue.get_history(
                max_items=int(max_items) if max_items is not None else None,
                offset=int(offset) if offset is not None else -1,
            )
        )

    async def get_history_item(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue.get_history(prompt_id=request.match_info["prompt_id"]))

    async def post_history(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("clear"):
            self.queue.wipe_history()
        for prompt_id in json_data.get("delete", []):
            self.queue.delete_history_item(prompt_id)
        return web.Response(status=200)

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, output_dir = self.folders.annotated(query["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        if output_dir is None:
            output_dir = self.folders.by_type(query.get("type", "output"))
        if output_dir is None:
            return web.Response(status=400)
        if "subfolder" in query:
            full_output_dir = os.path.join(output_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full_output_dir), output_dir)) != output_dir:
                return web.Response(status=403)
            output_dir = full_output_dir
        filename = os.path.basename(filename)
        file = os.path.join(output_dir, filename)
        if not os.path.isfile(file):
            return web.Response(status=404)
        headers = {"Content-Disposition": f'filename="{filename}"', "Content-Type": content_type_for(filename)}
        return web.FileResponse(file, headers=headers)

    async def interrupt(self, request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            json_data = {}
        prompt_id = json_data.get("prompt_id") if isinstance(json_data, dict) else None
        if prompt_id:
            running, _ = self.queue.current_queue()
            if any(item[1] == prompt_id for item in running):
                log.info("Interrupting prompt %s", prompt_id)
                self.executor.interrupt()
            else:
                log.info("Prompt %s is not currently running, skipping interrupt", prompt_id)
        else:
            log.info("Global interrupt (no prompt_id specified)")
            self.executor.interrupt()
        return web.Response(status=200)

    async def free(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        for flag in ("unload_models", "free_memory"):
            if json_data.get(flag, False):
                self.queue.flags[flag] = True
        if self.queue.flags.get("free_memory") and not self.queue.currently_running:
            self.queue.flags.pop("free_memory")
            self.executor.cache.clear()
        return web.Response(status=200)

    async def upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        kind = post.get("type") or "input"
        upload_dir = self.folders.by_type(str(kind))
        if upload_dir is None:
            upload_dir, kind = self.folders.input, "input"
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        full_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        if os.path.commonpath((upload_dir, os.path.abspath(os.path.join(full_folder, image.filename)))) != upload_dir:
            return web.Response(status=400)
        os.makedirs(full_folder, exist_ok=True)
        data = image.file.read()
        overwrite = post.get("overwrite") in ("true", "1")
        filename, duplicate = upload_target(upload_dir, subfolder, image.filename, data, overwrite)
        if not duplicate:
            with open(os.path.join(full_folder, filename), "wb") as fh:
                fh.write(data)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})

    async def system_stats(self, request: web.Request) -> web.Response:
        total, free = _ram()
        s = self.settings
        system = {
            "os": os.name,
            "ram_total": total,
            "ram_free": free,
            "comfyui_version": s.comfyui_version,
            "required_frontend_version": s.required_frontend_version,
            "installed_templates_version": s.templates_version,
            "required_templates_version": s.templates_version,
            "python_version": sys.version,
            "pytorch_version": s.pytorch_version,
            "embedded_python": False,
            "argv": list(s.argv),
        }
        device = {
            "name": "cpu",
            "type": "cpu",
            "index": None,
            "vram_total": total,
            "vram_free": free,
            "torch_vram_total": total,
            "torch_vram_free": free,
        }
        log.debug("system_stats on %s", platform.platform())
        return web.json_response({"system": system, "devices": [device]})

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response(self.features())

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response({name: node.object_info(self.folders) for name, node in self.nodes().items()})

    async def object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        nodes = self.nodes()
        if name not in nodes:
            return web.json_response({})
        return web.json_response({name: nodes[name].object_info(self.folders)})
