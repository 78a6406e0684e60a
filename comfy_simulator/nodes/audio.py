"""Audio nodes of ComfyUI 0.3.64 (``comfy_extras.nodes_audio``, V1 style)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np

from .. import media
from ..paths import AUDIO_VIDEO_EXTS, Folders, file_sha256, get_save_image_path
from .base import InputSpec, NodeContext, NodeDef, NodeOutput

MODULE = "comfy_extras.nodes_audio"


class EmptyAudio(NodeDef):
    name = "EmptyAudio"
    display_name = "Empty Audio"
    category = "audio"
    python_module = MODULE
    return_types = ("AUDIO",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec(
                "duration",
                "FLOAT",
                {
                    "default": 60.0,
                    "min": 0.0,
                    "max": 0xFFFFFFFFFFFFFFFF,
                    "step": 0.01,
                    "tooltip": "Duration of the empty audio clip in seconds",
                },
            ),
            InputSpec("sample_rate", "INT", {"default": 44100, "tooltip": "Sample rate of the empty audio clip."}),
            InputSpec(
                "channels",
                "INT",
                {
                    "default": 2,
                    "min": 1,
                    "max": 2,
                    "tooltip": "Number of audio channels (1 for mono, 2 for stereo).",
                },
            ),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        samples = int(round(float(kw["duration"]) * int(kw["sample_rate"])))
        waveform = np.zeros((1, int(kw["channels"]), samples), np.float32)
        return NodeOutput(({"waveform": waveform, "sample_rate": int(kw["sample_rate"])},))


class LoadAudio(NodeDef):
    name = "LoadAudio"
    display_name = "Load Audio"
    category = "audio"
    python_module = MODULE
    return_types = ("AUDIO",)
    validated_inputs = ("audio",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [InputSpec("audio", tuple(folders.input_files(AUDIO_VIDEO_EXTS)), {"audio_upload": True})]

    def validate_inputs(self, folders: Folders, values: dict[str, Any]) -> bool | str:
        if not folders.exists_annotated(str(values.get("audio"))):
            return "Invalid audio file: {}".format(values.get("audio"))
        return True

    def fingerprint(self, folders: Folders, values: dict[str, Any]) -> Any:
        return file_sha256(folders.annotated_filepath(str(values["audio"])))

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        waveform, rate = await asyncio.to_thread(media.decode_audio, ctx.folders.annotated_filepath(kw["audio"]))
        return NodeOutput(({"waveform": waveform[np.newaxis], "sample_rate": rate},))


def save_audio(ctx: NodeContext, audio: dict[str, Any], prefix: str, fmt: str, quality: str) -> list[dict[str, str]]:
    full_folder, filename, counter, subfolder, _ = get_save_image_path(prefix, ctx.folders.output)
    metadata = ctx.png_text()
    results = []
    for batch_number, waveform in enumerate(audio["waveform"]):
        file = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.{fmt}"
        data = media.encode_audio(np.asarray(waveform, np.float32), int(audio["sample_rate"]), fmt, quality, metadata)
        with open(os.path.join(full_folder, file), "wb") as fh:
            fh.write(data)
        results.append({"filename": file, "subfolder": subfolder, "type": "output"})
        counter += 1
    return results


class _SaveAudioBase(NodeDef):
    category = "audio"
    python_module = MODULE
    output_node = True
    fmt = "flac"
    qualities: tuple[str, ...] = ()
    default_quality = ""

    def inputs(self, folders: Folders) -> list[InputSpec]:
        specs = [
            InputSpec("audio", "AUDIO", None),
            InputSpec("filename_prefix", "STRING", {"default": "audio/ComfyUI"}),
        ]
        if self.qualities:
            specs.append(InputSpec("quality", self.qualities, {"default": self.default_quality}))
        return specs

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        quality = str(kw.get("quality", self.default_quality))
        results = await asyncio.to_thread(save_audio, ctx, kw["audio"], kw["filename_prefix"], self.fmt, quality)
        return NodeOutput((), {"audio": results})


class SaveAudio(_SaveAudioBase):
    name = "SaveAudio"
    display_name = "Save Audio (FLAC)"


class SaveAudioMP3(_SaveAudioBase):
    name = "SaveAudioMP3"
    display_name = "Save Audio (MP3)"
    fmt = "mp3"
    qualities = ("V0", "128k", "320k")
    default_quality = "V0"


class SaveAudioOpus(_SaveAudioBase):
    name = "SaveAudioOpus"
    display_name = "Save Audio (Opus)"
    fmt = "opus"
    qualities = ("64k", "96k", "128k", "192k", "320k")
    default_quality = "128k"
