"""Image nodes of ComfyUI 0.3.64: EmptyImage, LoadImage, ImageBatch, ImageBlur, SaveImage, PreviewImage."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import numpy as np

from .. import media
from ..paths import IMAGE_EXTS, Folders, file_sha256, get_save_image_path
from .base import MAX_RESOLUTION, InputSpec, NodeContext, NodeDef, NodeOutput

SAVE_DESCRIPTION = "Saves the input images to your ComfyUI output directory."
PREFIX_TOOLTIP = (
    "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or "
    "%Empty Latent Image.width% to include values from nodes."
)


class EmptyImage(NodeDef):
    name = "EmptyImage"
    category = "image"
    return_types = ("IMAGE",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        size = {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}
        return [
            InputSpec("width", "INT", dict(size)),
            InputSpec("height", "INT", dict(size)),
            InputSpec("batch_size", "INT", {"default": 1, "min": 1, "max": 4096}),
            InputSpec("color", "INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        color = int(kw["color"])
        rgb = np.array([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], np.float32) / 255.0
        images = np.empty((int(kw["batch_size"]), int(kw["height"]), int(kw["width"]), 3), np.float32)
        images[...] = rgb
        return NodeOutput((images,))


class LoadImage(NodeDef):
    name = "LoadImage"
    display_name = "Load Image"
    category = "image"
    return_types = ("IMAGE", "MASK")
    validated_inputs = ("image",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [InputSpec("image", tuple(folders.input_files(IMAGE_EXTS)), {"image_upload": True})]

    def validate_inputs(self, folders: Folders, values: dict[str, Any]) -> bool | str:
        if not folders.exists_annotated(str(values.get("image"))):
            return "Invalid image file: {}".format(values.get("image"))
        return True

    def fingerprint(self, folders: Folders, values: dict[str, Any]) -> Any:
        return file_sha256(folders.annotated_filepath(str(values["image"])))

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        images, masks = await asyncio.to_thread(media.read_image, ctx.folders.annotated_filepath(kw["image"]))
        return NodeOutput((images, masks))


class ImageBatch(NodeDef):
    name = "ImageBatch"
    display_name = "Batch Images"
    category = "image"
    return_types = ("IMAGE",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [InputSpec("image1", "IMAGE", {}), InputSpec("image2", "IMAGE", {})]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        image1, image2 = kw["image1"], kw["image2"]
        if image1.shape[1:] != image2.shape[1:]:
            image2 = _resize_center(image2, image1.shape[1], image1.shape[2])
        return NodeOutput((np.concatenate((image1, image2), axis=0),))


def _resize_center(images: Any, height: int, width: int) -> Any:
    """Scale to cover (height, width) keeping the aspect ratio, then centre-crop (nearest neighbour)."""
    _, h, w, _ = images.shape
    scale = max(height / h, width / w)
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    rows = np.minimum((np.arange(sh) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(sw) / scale).astype(int), w - 1)
    scaled = images[:, rows][:, :, cols]
    top, left = (sh - height) // 2, (sw - width) // 2
    return scaled[:, top : top + height, left : left + width]


def _blur(images: Any, radius: int, sigma: float, delay_per_mp: float) -> Any:
    started = time.monotonic()
    axis = np.linspace(-1, 1, radius * 2 + 1, dtype=np.float32)
    kernel = np.exp(-(axis * axis) / (2.0 * sigma * sigma))
    kernel /= kernel.sum()
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    _, h, w, _ = images.shape
    rows = sum(k * padded[:, i : i + h, :, :] for i, k in enumerate(kernel))
    out = sum(k * rows[:, :, i : i + w, :] for i, k in enumerate(kernel))
    remaining = images.shape[0] * h * w / 1e6 * delay_per_mp - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)  # runs in a worker thread; like the real blur it ignores interrupts
    return np.asarray(out, dtype=np.float32)


class ImageBlur(NodeDef):
    name = "ImageBlur"
    display_name = "Image Blur"
    category = "image/postprocessing"
    python_module = "comfy_extras.nodes_post_processing"
    return_types = ("IMAGE",)

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("image", "IMAGE", None),
            InputSpec("blur_radius", "INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
            InputSpec("sigma", "FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        image, radius, sigma = kw["image"], int(kw["blur_radius"]), float(kw["sigma"])
        if radius == 0:
            return NodeOutput((image,))
        delay = ctx.settings.blur_seconds_per_megapixel
        return NodeOutput((await asyncio.to_thread(_blur, image, radius, sigma, delay),))


def save_png_batch(ctx: NodeContext, images: Any, prefix: str, folder: str, kind: str) -> list[dict[str, str]]:
    full_folder, filename, counter, subfolder, _ = get_save_image_path(prefix, folder, images.shape[2], images.shape[1])
    results = []
    text = ctx.png_text()
    for batch_number, image in enumerate(images):
        file = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        with open(os.path.join(full_folder, file), "wb") as fh:
            fh.write(media.png_bytes(media.to_uint8(image), text))
        results.append({"filename": file, "subfolder": subfolder, "type": kind})
        counter += 1
    return results


class SaveImage(NodeDef):
    name = "SaveImage"
    display_name = "Save Image"
    category = "image"
    description = SAVE_DESCRIPTION
    output_node = True

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("images", "IMAGE", {"tooltip": "The images to save."}),
            InputSpec("filename_prefix", "STRING", {"default": "ComfyUI", "tooltip": PREFIX_TOOLTIP}),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        folder = ctx.folders.output
        results = await asyncio.to_thread(save_png_batch, ctx, kw["images"], kw["filename_prefix"], folder, "output")
        return NodeOutput((), {"images": results})


class PreviewImage(SaveImage):
    name = "PreviewImage"
    display_name = "Preview Image"

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [InputSpec("images", "IMAGE", None)]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        prefix = "ComfyUI_temp_" + ctx.temp_letters
        results = await asyncio.to_thread(save_png_batch, ctx, kw["images"], prefix, ctx.folders.temp, "temp")
        return NodeOutput((), {"images": results})


class SaveImageWebsocket(NodeDef):
    """The custom node ComfyUI bundles (``custom_nodes/websocket_image_save.py``): each image goes to the
    prompt's client as a PNG through the progress hook (a binary preview frame, ``progress`` value = the
    image's index), nothing is written, history lists nothing for it, and it is never cached."""

    name = "SaveImageWebsocket"
    category = "api node/image/websocket"
    python_module = "custom_nodes.websocket_image_save"
    output_node = True

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [InputSpec("images", "IMAGE", None)]

    def fingerprint(self, folders: Folders, values: dict[str, Any]) -> Any:
        return time.time()  # its IS_CHANGED

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        images = kw["images"]
        for step, image in enumerate(images):
            png = await asyncio.to_thread(media.png_bytes, media.to_uint8(image))
            await ctx.progress(step, images.shape[0], ("PNG", png))
        return NodeOutput()
