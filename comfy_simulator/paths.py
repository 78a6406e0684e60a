"""ComfyUI's folder rules: annotated names, save-path counters, /view types, upload renaming."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from .settings import SimulatorSettings

# /view Content-Type as the real server sent it (comfyui-real.md §5.5), independent of the host's mime table.
CONTENT_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".opus": "audio/ogg",
    ".ogg": "audio/ogg",
    ".wav": "audio/x-wav",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".json": "application/json",
    ".txt": "text/plain",
}
# Served as downloads, like ComfyUI does for types a browser could run.
UNSAFE_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
AUDIO_VIDEO_EXTS = {".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".webm", ".mkv", ".mov"}


def content_type_for(filename: str) -> str:
    ctype = CONTENT_TYPES.get(os.path.splitext(filename)[1].lower(), "application/octet-stream")
    return "application/octet-stream" if ctype in UNSAFE_TYPES else ctype


class Folders:
    """The output / temp / input directories of one simulator."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.output = os.path.abspath(settings.output_dir)
        self.temp = os.path.abspath(settings.temp_dir)
        self.input = os.path.abspath(settings.input_dir)
        self.models = settings.model_files

    def model_files(self, folder: str) -> list[str]:
        """The files of one ``models/<folder>`` (what model loaders list in object_info)."""
        return sorted(self.models.get(folder, ()))

    def by_type(self, kind: str | None) -> str | None:
        return {"output": self.output, "temp": self.temp, "input": self.input}.get(kind or "")

    def annotated(self, name: str) -> tuple[str, str | None]:
        """``"x.png [output]"`` → ``("x.png", output_dir)``; no annotation → ``(name, None)``."""
        for suffix, base in ((" [output]", self.output), (" [input]", self.input), (" [temp]", self.temp)):
            if name.endswith(suffix):
                return name[: -len(suffix)], base
        return name, None

    def annotated_filepath(self, name: str) -> str:
        name, base = self.annotated(name)
        return os.path.join(base or self.input, name)

    def exists_annotated(self, name: str) -> bool:
        return os.path.exists(self.annotated_filepath(name))

    def input_files(self, exts: set[str]) -> list[str]:
        """Top-level input files of the given kinds (what LoadImage / LoadAudio list in object_info)."""
        try:
            names = os.listdir(self.input)
        except FileNotFoundError:
            return []
        files = [n for n in names if os.path.isfile(os.path.join(self.input, n))]
        return sorted(n for n in files if os.path.splitext(n)[1].lower() in exts)


class SavePathError(Exception):
    """Raised (as ComfyUI's bare ``Exception``) for a prefix that leaves the output folder."""


def get_save_image_path(
    filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0
) -> tuple[str, str, int, str, str]:
    """``folder_paths.get_save_image_path``: (full_output_folder, filename, counter, subfolder, prefix)."""

    def compute_vars(text: str) -> str:
        now = time.localtime()
        for key, value in (
            ("%width%", str(image_width)),
            ("%height%", str(image_height)),
            ("%year%", str(now.tm_year)),
            ("%month%", str(now.tm_mon).zfill(2)),
            ("%day%", str(now.tm_mday).zfill(2)),
            ("%hour%", str(now.tm_hour).zfill(2)),
            ("%minute%", str(now.tm_min).zfill(2)),
            ("%second%", str(now.tm_sec).zfill(2)),
        ):
            text = text.replace(key, value)
        return text

    if "%" in filename_prefix:
        filename_prefix = compute_vars(filename_prefix)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    common = os.path.commonpath((output_dir, os.path.abspath(full_output_folder)))
    if common != output_dir:
        raise SavePathError(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(full_output_folder)}"
            f"\n         output_dir: {output_dir}"
            f"\n commonpath: {common}"
        )

    def map_filename(name: str) -> tuple[int, str]:
        prefix_len = len(os.path.basename(filename_prefix))
        prefix = name[: prefix_len + 1]
        try:
            digits = int(name[prefix_len + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        return digits, prefix

    try:
        matches = [
            m
            for m in map(map_filename, os.listdir(full_output_folder))
            if os.path.normcase(m[1][:-1]) == os.path.normcase(filename) and m[1][-1:] == "_"
        ]
        counter = max(matches)[0] + 1
    except ValueError:
        counter = 1
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        counter = 1
    return full_output_folder, filename, counter, subfolder, filename_prefix


def upload_target(folder: str, subfolder: str, filename: str, data: bytes, overwrite: bool) -> tuple[str, bool]:
    """ComfyUI's upload renaming: returns (final filename, is_duplicate). Same bytes under the same name
    reuse the existing file; different bytes become ``name (1).ext``, ``name (2).ext`` ..."""
    full_folder = os.path.join(folder, os.path.normpath(subfolder))
    path = os.path.join(full_folder, filename)
    if overwrite:
        return filename, False
    stem, ext = os.path.splitext(filename)
    digest = hashlib.sha256(data).hexdigest()
    i = 1
    while os.path.exists(path):
        if hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest:
            return filename, True
        filename = f"{stem} ({i}){ext}"
        path = os.path.join(full_folder, filename)
        i += 1
    return filename, False


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
