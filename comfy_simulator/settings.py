"""Settings of one simulated ComfyUI (+ SwarmUI proxy) server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class SimulatorSettings:
    """Everything a simulator instance needs; immutable once the server runs.

    ``data_dir`` holds ``output/``, ``temp/`` and ``input/`` like ComfyUI's folders (created on start;
    ``temp/`` is wiped on start, as ComfyUI does).
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    backend_ids: tuple[int, ...] = (0,)
    # ImageBlur sleeps this long per megapixel (per image in the batch) on top of the real blur, so tests
    # can make a chain slow enough to interrupt in the middle without huge images.
    blur_seconds_per_megapixel: float = 0.05
    max_upload_size: int = 104857600
    comfyui_version: str = "0.3.64"
    required_frontend_version: str = "1.27.10"
    templates_version: str = "0.1.95"
    pytorch_version: str = "2.13.0+cpu"
    argv: tuple[str, ...] = field(default=RECORDED_ARGV)
    # Letters of PreviewImage's ``ComfyUI_temp_<letters>_`` prefix; None = 5 random letters per start.
    temp_letters: str | None = None

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "output"

    @property
    def temp_dir(self) -> Path:
        return self.data_dir / "temp"

    @property
    def input_dir(self) -> Path:
        return self.data_dir / "input"
