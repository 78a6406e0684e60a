"""Video nodes of ComfyUI 0.3.64 (``comfy_extras.nodes_video``, comfy_api V3 style)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from .. import media
from ..paths import Folders, file_sha256, get_save_image_path
from .base import InputSpec, NodeContext, NodeDef, NodeOutput
from .image import PREFIX_TOOLTIP, SAVE_DESCRIPTION

MODULE = "comfy_extras.nodes_video"


@dataclass(frozen=True)
class VideoComponents:
    """``VideoFromComponents``: frames [B, H, W, 3], optional AUDIO dict, frame rate."""

    images: Any
    audio: dict[str, Any] | None
    fps: float

    def __str__(self) -> str:
        return f"VideoFromComponents({self.images.shape[0]} frames @ {self.fps} fps)"


class CreateVideo(NodeDef):
    name = "CreateVideo"
    display_name = "Create Video"
    category = "image/video"
    description = "Create a video from images."
    python_module = MODULE
    return_types = ("VIDEO",)
    v3 = True

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("images", "IMAGE", {"tooltip": "The images to create a video from."}),
            InputSpec("fps", "FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}),
            InputSpec("audio", "AUDIO", {"tooltip": "The audio to add to the video."}, optional=True),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        return NodeOutput((VideoComponents(kw["images"], kw.get("audio"), float(kw["fps"])),))


VIDEO_EXTS = {".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif"}


class LoadVideo(NodeDef):
    """Frames and frame rate of an input video (its audio is not simulated: ``audio`` stays None)."""

    name = "LoadVideo"
    display_name = "Load Video"
    category = "image/video"
    python_module = MODULE
    return_types = ("VIDEO",)
    validated_inputs = ("file",)
    v3 = True

    def inputs(self, folders: Folders) -> list[InputSpec]:
        options = folders.input_files(VIDEO_EXTS)
        return [InputSpec("file", "COMBO", {"multiselect": False, "video_upload": True, "options": options})]

    def validate_inputs(self, folders: Folders, values: dict[str, Any]) -> bool | str:
        if not folders.exists_annotated(str(values.get("file"))):
            return "Invalid video file: {}".format(values.get("file"))
        return True

    def fingerprint(self, folders: Folders, values: dict[str, Any]) -> Any:
        return file_sha256(folders.annotated_filepath(str(values["file"])))

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        images, fps = await asyncio.to_thread(media.decode_video, ctx.folders.annotated_filepath(kw["file"]))
        return NodeOutput((VideoComponents(images, None, fps),))


class SaveVideo(NodeDef):
    name = "SaveVideo"
    display_name = "Save Video"
    category = "image/video"
    description = SAVE_DESCRIPTION
    python_module = MODULE
    output_node = True
    v3 = True

    def inputs(self, folders: Folders) -> list[InputSpec]:
        combo = {"multiselect": False}
        return [
            InputSpec("video", "VIDEO", {"tooltip": "The video to save."}),
            InputSpec(
                "filename_prefix",
                "STRING",
                {"tooltip": PREFIX_TOOLTIP, "default": "video/ComfyUI", "multiline": False},
            ),
            InputSpec(
                "format",
                "COMBO",
                {"tooltip": "The format to save the video as.", "default": "auto", **combo, "options": ["auto", "mp4"]},
            ),
            InputSpec(
                "codec",
                "COMBO",
                {"tooltip": "The codec to use for the video.", "default": "auto", **combo, "options": ["auto", "h264"]},
            ),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        video: VideoComponents = kw["video"]
        height, width = video.images.shape[1], video.images.shape[2]
        folder, filename, counter, subfolder, _ = get_save_image_path(
            kw["filename_prefix"], ctx.folders.output, width, height
        )
        metadata: dict[str, Any] = dict(ctx.extra_data.get("extra_pnginfo") or {})
        metadata["prompt"] = ctx.prompt
        file = f"{filename}_{counter:05}_.mp4"
        path = os.path.join(folder, file)
        await asyncio.to_thread(media.encode_mp4, path, video.images, video.fps, video.audio, metadata)
        return NodeOutput(
            (), {"images": [{"filename": file, "subfolder": subfolder, "type": "output"}], "animated": [True]}
        )


class SaveWEBM(NodeDef):
    name = "SaveWEBM"
    category = "image/video"
    python_module = MODULE
    output_node = True
    experimental = True
    v3 = True

    def inputs(self, folders: Folders) -> list[InputSpec]:
        crf_tip = (
            "Higher crf means lower quality with a smaller file size, lower crf means higher quality higher filesize."
        )
        return [
            InputSpec("images", "IMAGE", {}),
            InputSpec("filename_prefix", "STRING", {"default": "ComfyUI", "multiline": False}),
            InputSpec("codec", "COMBO", {"multiselect": False, "options": ["vp9", "av1"]}),
            InputSpec("fps", "FLOAT", {"default": 24.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
            InputSpec("crf", "FLOAT", {"tooltip": crf_tip, "default": 32.0, "min": 0, "max": 63.0, "step": 1}),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        images = kw["images"]
        folder, filename, counter, subfolder, _ = get_save_image_path(
            kw["filename_prefix"], ctx.folders.output, images.shape[2], images.shape[1]
        )
        file = f"{filename}_{counter:05}_.webm"
        path = os.path.join(folder, file)
        metadata = ctx.png_text()
        await asyncio.to_thread(
            media.encode_webm, path, images, float(kw["fps"]), float(kw["crf"]), str(kw["codec"]), metadata
        )
        return NodeOutput(
            (), {"images": [{"filename": file, "subfolder": subfolder, "type": "output"}], "animated": [True]}
        )
