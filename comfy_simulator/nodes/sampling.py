"""Latents, the sampler and the VAE of ComfyUI 0.3.64, without weights: ACE-Step, SD3.5 and Wan 2.2 shapes.

A ``SimLatent`` records what a real latent's shape encodes (image size, video frames, audio length). The
simulated ``KSampler`` runs ``steps`` steps (``SimulatorSettings.model_step_seconds`` each) with
``progress`` events, honours interrupts between steps, and stamps the latent with a signature of
everything that would change a real result (model, prompts, seed, steps, cfg, sampler, denoise). The
decoders turn that into media of the right kind and size whose content follows from the signature:
the same inputs give the same pixels / samples, different prompts or seeds give different ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..paths import Folders
from .base import MAX_RESOLUTION, InputSpec, NodeContext, NodeDef, NodeOutput
from .models import SimConditioning, SimModel
from .previews import sampler_previews
from .simulated import run_steps

AUDIO_RATE = 44100
ACE_SAMPLES_PER_LATENT = 512 * 8  # EmptyAceStepLatentAudio: length = int(seconds * 44100 / 512 / 8)
SAMPLERS = (
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "res_multistep_cfg_pp",
    "gradient_estimation",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)
SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic")


@dataclass(frozen=True)
class SimLatent:
    """A LATENT: its kind and the media shape it decodes to; ``signature`` is set once it was sampled."""

    kind: str  # "image", "video" or "audio"
    batch: int
    width: int = 0
    height: int = 0
    frames: int = 1  # decoded video frames
    samples: int = 0  # decoded audio samples at AUDIO_RATE
    source: Any = None  # pixels [B, H, W, 3] an img2img latent was encoded from
    signature: str = ""
    denoise: float = 1.0

    def __str__(self) -> str:
        return f"latent({self.kind}, batch {self.batch})"


def model_kind(model: SimModel) -> str:
    """Which latent kind a model's files sample (the simulator's stand-in for the model's latent format)."""
    name = " ".join(model.files).lower()
    return "audio" if "ace_step" in name else "video" if "wan" in name else "image"


def _digest(signature: str, salt: str) -> bytes:
    return hashlib.sha256(f"{signature}|{salt}".encode()).digest()


def _colour(signature: str, salt: str) -> Any:
    return np.frombuffer(_digest(signature, salt)[:3], np.uint8).astype(np.float32) / 255.0


def _frame(colour: Any, height: int, width: int) -> Any:
    """A colour with a gentle left-to-right ramp, so frames are not flat (and codecs keep the colour)."""
    ramp = np.linspace(0.8, 1.0, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    return np.broadcast_to(colour * ramp, (height, width, 3)).astype(np.float32)


def decode_images(latent: SimLatent) -> Any:
    """IMAGE [B * frames, H, W, 3] for an image or video latent."""
    sig = latent.signature or "unsampled"
    if latent.kind == "video":
        frames = []
        for b in range(latent.batch):
            start, end = _colour(sig, f"start{b}"), _colour(sig, f"end{b}")
            for f in range(latent.frames):
                t = f / max(1, latent.frames - 1)
                frames.append(_frame((1 - t) * start + t * end, latent.height, latent.width))
        return np.stack(frames)
    images = np.stack([_frame(_colour(sig, str(b)), latent.height, latent.width) for b in range(latent.batch)])
    if latent.source is not None:
        images = latent.denoise * images + (1.0 - latent.denoise) * latent.source
    return images.astype(np.float32)


def decode_audio(latent: SimLatent) -> dict[str, Any]:
    """AUDIO: a stereo tone per batch item whose pitch follows from the signature."""
    t = np.arange(latent.samples, dtype=np.float32) / AUDIO_RATE
    waves = []
    for b in range(latent.batch):
        digest = _digest(latent.signature or "unsampled", str(b))
        freq = 110.0 * 2 ** (digest[0] / 64.0)
        wave = 0.25 * np.sin(2 * np.pi * freq * t)
        waves.append(np.stack([wave, wave]))
    return {"waveform": np.stack(waves).astype(np.float32), "sample_rate": AUDIO_RATE}


def _size(default: int, minimum: int, step: int) -> dict[str, Any]:
    return {"default": default, "min": minimum, "max": MAX_RESOLUTION, "step": step}


BATCH = {"default": 1, "min": 1, "max": 4096}


class EmptySD3LatentImage(NodeDef):
    name = "EmptySD3LatentImage"
    category = "latent/sd3"
    python_module = "comfy_extras.nodes_sd3"
    return_types = ("LATENT",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("width", "INT", _size(1024, 16, 16)),
            InputSpec("height", "INT", _size(1024, 16, 16)),
            InputSpec("batch_size", "INT", dict(BATCH, tooltip="The number of latent images in the batch.")),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        width, height = int(kw["width"]) // 8 * 8, int(kw["height"]) // 8 * 8
        return NodeOutput((SimLatent("image", int(kw["batch_size"]), width, height),))


class EmptyAceStepLatentAudio(NodeDef):
    name = "EmptyAceStepLatentAudio"
    display_name = "Empty Ace Step 1.0 Latent Audio"
    category = "latent/audio"
    python_module = "comfy_extras.nodes_ace"
    return_types = ("LATENT",)
    v3 = True

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("seconds", "FLOAT", {"default": 120.0, "min": 1.0, "max": 1000.0, "step": 0.1}),
            InputSpec("batch_size", "INT", dict(BATCH, tooltip="The number of latent images in the batch.")),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        length = int(float(kw["seconds"]) * AUDIO_RATE / ACE_SAMPLES_PER_LATENT)
        return NodeOutput((SimLatent("audio", int(kw["batch_size"]), samples=length * ACE_SAMPLES_PER_LATENT),))


class Wan22ImageToVideoLatent(NodeDef):
    name = "Wan22ImageToVideoLatent"
    category = "conditioning/inpaint"
    python_module = "comfy_extras.nodes_wan"
    return_types = ("LATENT",)
    v3 = True

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("vae", "VAE", {}),
            InputSpec("width", "INT", _size(1280, 32, 32)),
            InputSpec("height", "INT", _size(704, 32, 32)),
            InputSpec("length", "INT", {"default": 49, "min": 1, "max": MAX_RESOLUTION, "step": 4}),
            InputSpec("batch_size", "INT", dict(BATCH)),
            InputSpec("start_image", "IMAGE", {}, optional=True),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        latent_frames = (int(kw["length"]) - 1) // 4 + 1  # Wan 2.2's VAE packs 4 frames per latent frame
        width, height = int(kw["width"]) // 16 * 16, int(kw["height"]) // 16 * 16
        latent = SimLatent("video", int(kw["batch_size"]), width, height, frames=(latent_frames - 1) * 4 + 1)
        return NodeOutput((latent,))


class KSampler(NodeDef):
    name = "KSampler"
    category = "sampling"
    description = "Uses the provided model, positive and negative conditioning to denoise the latent image."
    return_types = ("LATENT",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        seed = {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}
        return [
            InputSpec("model", "MODEL", {"tooltip": "The model used for denoising the input latent."}),
            InputSpec("seed", "INT", seed),
            InputSpec("steps", "INT", {"default": 20, "min": 1, "max": 10000}),
            InputSpec("cfg", "FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            InputSpec("sampler_name", SAMPLERS),
            InputSpec("scheduler", SCHEDULERS),
            InputSpec("positive", "CONDITIONING", {}),
            InputSpec("negative", "CONDITIONING", {}),
            InputSpec("latent_image", "LATENT", {}),
            InputSpec("denoise", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        model: SimModel = kw["model"]
        latent: SimLatent = kw["latent_image"]
        if model_kind(model) != latent.kind:
            raise RuntimeError(f"{model} cannot sample a {latent.kind} latent (it makes {model_kind(model)})")
        steps = int(kw["steps"])
        # ComfyUI has no previewer for audio latents; a video's preview shows its first frame.
        size = (latent.width, latent.height) if latent.kind != "audio" else (0, 0)
        await run_steps(ctx, steps, steps * ctx.settings.model_step_seconds, sampler_previews(ctx.settings, *size))
        positive: SimConditioning = kw["positive"]
        negative: SimConditioning = kw["negative"]
        keys = ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")
        parts = [str(model), model.shift, repr(positive), repr(negative), latent.signature, [kw[k] for k in keys]]
        signature = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
        return NodeOutput((replace(latent, signature=signature, denoise=float(kw["denoise"])),))


class VAEDecode(NodeDef):
    name = "VAEDecode"
    display_name = "VAE Decode"
    category = "latent"
    description = "Decodes latent images back into pixel space images."
    return_types = ("IMAGE",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("samples", "LATENT", {"tooltip": "The latent to be decoded."}),
            InputSpec("vae", "VAE", {"tooltip": "The VAE model used for decoding the latent."}),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        latent: SimLatent = kw["samples"]
        if latent.kind == "audio":
            raise RuntimeError("VAEDecode got an audio latent: decode it with VAEDecodeAudio")
        return NodeOutput((decode_images(latent),))


class VAEDecodeAudio(NodeDef):
    name = "VAEDecodeAudio"
    display_name = "VAE Decode Audio"
    category = "latent/audio"
    python_module = "comfy_extras.nodes_audio"
    return_types = ("AUDIO",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [InputSpec("samples", "LATENT", None), InputSpec("vae", "VAE", None)]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        latent: SimLatent = kw["samples"]
        if latent.kind != "audio":
            raise RuntimeError(f"VAEDecodeAudio got a {latent.kind} latent: decode it with VAEDecode")
        return NodeOutput((decode_audio(latent),))


class VAEEncode(NodeDef):
    name = "VAEEncode"
    display_name = "VAE Encode"
    category = "latent"
    return_types = ("LATENT",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [InputSpec("pixels", "IMAGE", None), InputSpec("vae", "VAE", None)]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        pixels = kw["pixels"][..., :3]
        _, h, w, _ = pixels.shape
        top, left = (h % 8) // 2, (w % 8) // 2  # vae_encode_crop_pixels: centre crop to the VAE's 8 px grid
        pixels = pixels[:, top : top + h // 8 * 8, left : left + w // 8 * 8]
        batch, height, width = pixels.shape[:3]
        return NodeOutput((SimLatent("image", batch, width, height, source=np.asarray(pixels, np.float32)),))


SAMPLING_NODES: tuple[type[NodeDef], ...] = (
    EmptySD3LatentImage,
    EmptyAceStepLatentAudio,
    Wan22ImageToVideoLatent,
    KSampler,
    VAEDecode,
    VAEDecodeAudio,
    VAEEncode,
)
