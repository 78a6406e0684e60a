"""Settings of one simulated ComfyUI (+ SwarmUI proxy) server."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

RECORDED_ARGV = (
    "main.py",
    "--cpu",
    "--listen",
    "127.0.0.1",
    "--port",
    "8188",
    "--disable-auto-launch",
    "--disable-api-nodes",
)


# The model files the simulated loaders list (ComfyUI's ``models/<folder>``): the ones the shipped model
# templates name. No weights exist; the names only make the loaders' combo validation behave like ComfyUI.
DEFAULT_MODEL_FILES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "checkpoints": (
            "ace_step_v1_3.5b.safetensors",
            "sd3.5_large.safetensors",
            "sd3.5_large_turbo.safetensors",
            "sd3.5_medium.safetensors",
        ),
        "diffusion_models": ("wan2.2_ti2v_5B_fp16.safetensors",),
        "text_encoders": (
            "clip_g.safetensors",
            "clip_l.safetensors",
            "t5xxl_fp16.safetensors",
            "t5xxl_fp8_e4m3fn_scaled.safetensors",
            "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        ),
        "vae": ("wan2.2_vae.safetensors",),
    }
)

# SwarmUI's owner role holds every registered permission id plus the wildcard "*"; of the ids, these are the
# ones the simulated routes check (ListBackends; the /ComfyBackendDirect/ proxy; POSTs through it).
OWNER_PERMISSIONS = ("view_backends_list", "comfy_direct_calls", "comfy_backend_generate", "*")


PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")  # ComfyUI's LatentPreviewMethod values


@dataclass(frozen=True)
class SimulatorSettings:
    """Everything a simulator instance needs; immutable once the server runs.

    ``data_dir`` holds ``output/``, ``temp/`` and ``input/`` like ComfyUI's folders (created on start;
    ``temp/`` is wiped on start, as ComfyUI does).
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    # SwarmUI backends. By default every id in ``backend_ids`` is a "ComfyUI API By URL" backend pointing at
    # the one simulated ComfyUI of this server. ``swarm_backends`` N > 0 instead plays a SwarmUI with N
    # self-started ComfyUI backends (ids 0 .. N-1), each its own simulated ComfyUI: backend 0 is the one
    # at ``comfy_url``, the others listen on ports of their own. The two settings exclude each other.
    backend_ids: tuple[int, ...] = (0,)
    swarm_backends: int = 0
    # SwarmUI's ``Network.RequiredAuthorization``: when set, every SwarmUI request (``/API/``,
    # ``/ComfyBackendDirect/``) must carry exactly this ``Authorization`` header (no bypass addresses).
    swarm_authorization: str = ""
    # Permission flags of SwarmUI's user (what GetNewSession lists). Without accounts the local user has the
    # owner role; fewer flags play a restricted user.
    swarm_permissions: tuple[str, ...] = OWNER_PERMISSIONS
    # Node classes this ComfyUI does not have (as if their custom nodes were not installed).
    without_nodes: frozenset[str] = frozenset()
    # ImageBlur sleeps this long per megapixel (per image in the batch) on top of the real blur, so tests
    # can make a chain slow enough to interrupt in the middle without huge images.
    blur_seconds_per_megapixel: float = 0.05
    max_upload_size: int = 104857600
    comfyui_version: str = "0.3.64"
    required_frontend_version: str = "1.27.10"
    templates_version: str = "0.1.95"
    pytorch_version: str = "2.13.0+cpu"
    argv: tuple[str, ...] = field(default=RECORDED_ARGV)
    # Simulated model nodes (KSampler) take this long per sampling step; small, so tests stay fast.
    model_step_seconds: float = 0.01
    # Every simulated sampler (KSampler, SimulatedSampler and the other SimulatedModelNodes) runs this many
    # times as fast as its inputs and model_step_seconds say: a faster or slower GPU.
    sampler_speed: float = 1.0
    # ComfyUI's --preview-method (default none: no sampler previews). latent2rgb and auto send a JPEG of
    # 1/8 the latent's pixel size at every sampler step; taesd one of the full size (at most 512 px).
    preview_method: str = "none"
    # False plays a ComfyUI from before feature_flags: it ignores them and sends only type-1 previews.
    preview_metadata: bool = True
    model_files: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_MODEL_FILES, hash=False)
    # Letters of PreviewImage's ``ComfyUI_temp_<letters>_`` prefix; None = 5 random letters per start.
    temp_letters: str | None = None
    # Benchmark hooks, off by default (the simulator then behaves exactly like ComfyUI):
    # called with every websocket message ({"type", "data"}) right after it was handed to the socket,
    # so a benchmark can stamp when each progress frame left the backend;
    frame_sent_hook: Callable[[dict[str, Any]], None] | None = field(default=None, compare=False, hash=False)
    # how many prompts the worker runs at once. ComfyUI runs one; more lets a benchmark overlap the
    # simulated work of many prompts. Each parallel prompt gets its own executor and output cache, and
    # /interrupt and /free reach none of them.
    parallel_prompts: int = 1

    def swarm_allows(self, permission: str) -> bool:
        """SwarmUI's ``User.HasPermission``: the flag itself, or the wildcard."""
        return permission in self.swarm_permissions or "*" in self.swarm_permissions

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "output"

    @property
    def temp_dir(self) -> Path:
        return self.data_dir / "temp"

    @property
    def input_dir(self) -> Path:
        return self.data_dir / "input"
