"""Model loaders and text encoders of ComfyUI 0.3.64, without weights.

They take ComfyUI's own inputs (file combos listing ``SimulatorSettings.model_files``, so an unknown model
is a ``value_not_in_list`` error as on a real server) and pass small descriptive values downstream:
``SimModel`` for MODEL / CLIP / VAE, ``SimConditioning`` for CONDITIONING. What the samplers and decoders
make of them is in ``sampling.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..paths import Folders
from .base import InputSpec, NodeContext, NodeDef, NodeOutput

CLIP_TYPES = (
    "stable_diffusion",
    "stable_cascade",
    "sd3",
    "stable_audio",
    "mochi",
    "ltxv",
    "pixart",
    "cosmos",
    "lumina2",
    "wan",
    "hidream",
    "chroma",
    "ace",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
)
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")


@dataclass(frozen=True)
class SimModel:
    """A loaded MODEL, CLIP or VAE: which files it came from, and settings patched onto it."""

    kind: str  # "model", "clip" or "vae"
    files: tuple[str, ...]
    shift: float | None = None

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(self.files)})"


@dataclass(frozen=True)
class SimConditioning:
    """Encoded text: the prompt (and lyrics) itself stands in for the embedding."""

    text: str
    lyrics: str = ""
    strength: float = 1.0
    zeroed: bool = False

    def __str__(self) -> str:
        return f"conditioning({self.text!r:.40})"


def _files(folders: Folders, folder: str, name: str, tooltip: str) -> InputSpec:
    return InputSpec(name, tuple(folders.model_files(folder)), {"tooltip": tooltip})


class CheckpointLoaderSimple(NodeDef):
    name = "CheckpointLoaderSimple"
    display_name = "Load Checkpoint"
    category = "loaders"
    description = "Loads a diffusion model checkpoint, diffusion models are used to denoise latents."
    return_types = ("MODEL", "CLIP", "VAE")

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [_files(folders, "checkpoints", "ckpt_name", "The name of the checkpoint (model) to load.")]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        files = (str(kw["ckpt_name"]),)
        return NodeOutput((SimModel("model", files), SimModel("clip", files), SimModel("vae", files)))


class UNETLoader(NodeDef):
    name = "UNETLoader"
    display_name = "Load Diffusion Model"
    category = "advanced/loaders"
    return_types = ("MODEL",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("unet_name", tuple(folders.model_files("diffusion_models"))),
            InputSpec("weight_dtype", WEIGHT_DTYPES),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        return NodeOutput((SimModel("model", (str(kw["unet_name"]),)),))


class CLIPLoader(NodeDef):
    name = "CLIPLoader"
    display_name = "Load CLIP"
    category = "advanced/loaders"
    return_types = ("CLIP",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("clip_name", tuple(folders.model_files("text_encoders"))),
            InputSpec("type", CLIP_TYPES),
            InputSpec("device", ("default", "cpu"), {"advanced": True}, optional=True),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        return NodeOutput((SimModel("clip", (str(kw["clip_name"]),)),))


class TripleCLIPLoader(NodeDef):
    name = "TripleCLIPLoader"
    category = "advanced/loaders"
    description = "[Recipes]\n\nsd3: clip-l, clip-g, t5"
    return_types = ("CLIP",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        names = tuple(folders.model_files("text_encoders"))
        return [InputSpec(f"clip_name{i}", names) for i in (1, 2, 3)]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        return NodeOutput((SimModel("clip", tuple(str(kw[f"clip_name{i}"]) for i in (1, 2, 3))),))


class VAELoader(NodeDef):
    name = "VAELoader"
    display_name = "Load VAE"
    category = "loaders"
    return_types = ("VAE",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [InputSpec("vae_name", (*folders.model_files("vae"), "pixel_space"))]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        return NodeOutput((SimModel("vae", (str(kw["vae_name"]),)),))


class ModelSamplingSD3(NodeDef):
    name = "ModelSamplingSD3"
    category = "advanced/model"
    python_module = "comfy_extras.nodes_model_advanced"
    return_types = ("MODEL",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("model", "MODEL", None),
            InputSpec("shift", "FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.01}),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        return NodeOutput((replace(kw["model"], shift=float(kw["shift"])),))


class CLIPTextEncode(NodeDef):
    name = "CLIPTextEncode"
    display_name = "CLIP Text Encode (Prompt)"
    category = "conditioning"
    description = (
        "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion "
        "model towards generating specific images."
    )
    return_types = ("CONDITIONING",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec(
                "text",
                "STRING",
                {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."},
            ),
            InputSpec("clip", "CLIP", {"tooltip": "The CLIP model used for encoding the text."}),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        return NodeOutput((SimConditioning(str(kw["text"])),))


class TextEncodeAceStepAudio(NodeDef):
    name = "TextEncodeAceStepAudio"
    category = "conditioning"
    python_module = "comfy_extras.nodes_ace"
    return_types = ("CONDITIONING",)
    v3 = True

    def inputs(self, folders: Folders) -> list[InputSpec]:
        text = {"multiline": True, "dynamicPrompts": True}
        return [
            InputSpec("clip", "CLIP", {}),
            InputSpec("tags", "STRING", dict(text)),
            InputSpec("lyrics", "STRING", dict(text)),
            InputSpec("lyrics_strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        encoded = SimConditioning(str(kw["tags"]), str(kw["lyrics"]), float(kw["lyrics_strength"]))
        return NodeOutput((encoded,))


class ConditioningZeroOut(NodeDef):
    name = "ConditioningZeroOut"
    category = "advanced/conditioning"
    return_types = ("CONDITIONING",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [InputSpec("conditioning", "CONDITIONING", None)]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        return NodeOutput((replace(kw["conditioning"], zeroed=True),))


MODEL_NODES: tuple[type[NodeDef], ...] = (
    CheckpointLoaderSimple,
    UNETLoader,
    CLIPLoader,
    TripleCLIPLoader,
    VAELoader,
    ModelSamplingSD3,
    CLIPTextEncode,
    TextEncodeAceStepAudio,
    ConditioningZeroOut,
)
