"""The simulator as a bench process: ``python -m benchmarks.simproc --data-dir D --ready-file F ...``.

Differences from ``python -m comfy_simulator`` (all opt-in settings or bench-only additions):
- every ``progress`` and ``executing: null`` frame is stamped (``time.time_ns()``) right after it was
  handed to the websocket (``SimulatorSettings.frame_sent_hook``); SIGUSR1 writes the stamps so far to
  ``--frames-file`` (JSON lines ``[prompt_id, node, value, ns]``, value -1 for completion);
- ``--parallel N`` runs up to N prompts at once (``SimulatorSettings.parallel_prompts``);
- ``--stalled`` starts with the queue stalled; SIGUSR2 releases it (every queued prompt starts);
- one more node, ``BenchBlob``: an output node writing ``size_mb`` MiB that start like an MP4 file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from comfy_simulator import SimulatorSettings, running
from comfy_simulator.nodes import NODE_CLASSES, InputSpec, NodeContext, NodeDef, NodeOutput
from comfy_simulator.paths import Folders, get_save_image_path

MIB = 1 << 20
# An ISO BMFF header (ftyp "isom") then one huge 'free' box: the service sniffs it as MP4.
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isommp41"


class BenchBlob(NodeDef):
    name = "BenchBlob"
    display_name = "Bench blob (MP4 header + padding)"
    category = "benchmark"
    output_node = True

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("size_mb", "INT", {"default": 200, "min": 1, "max": 100000}),
            InputSpec("filename_prefix", "STRING", {"default": "bench/blob"}),
        ]

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        folder, filename, counter, subfolder, _ = get_save_image_path(
            kw["filename_prefix"], ctx.folders.output, 640, 360
        )
        file = f"{filename}_{counter:05}_.mp4"
        await asyncio.to_thread(_write_blob, os.path.join(folder, file), int(kw["size_mb"]) * MIB)
        return NodeOutput(
            (), {"images": [{"filename": file, "subfolder": subfolder, "type": "output"}], "animated": [True]}
        )


def _write_blob(path: str, size: int) -> None:
    block = os.urandom(MIB)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(MP4_HEAD + (size - len(MP4_HEAD)).to_bytes(4, "big") + b"free")
        written = len(MP4_HEAD) + 8
        while written < size:
            chunk = block[: size - written]
            fh.write(chunk)
            written += len(chunk)


async def serve(args: argparse.Namespace) -> None:
    NODE_CLASSES.setdefault(BenchBlob.name, BenchBlob())
    stamps: list[tuple[str, str, int, int]] = []

    def on_sent(message: dict[str, Any]) -> None:
        kind = message.get("type")
        data = message.get("data") or {}
        if kind == "progress":
            stamps.append((data.get("prompt_id", ""), str(data.get("node")), int(data.get("value", 0)), time.time_ns()))
        elif kind == "executing" and data.get("node") is None and data.get("prompt_id"):
            stamps.append((data["prompt_id"], "", -1, time.time_ns()))

    settings = SimulatorSettings(
        data_dir=Path(args.data_dir),
        port=args.port,
        frame_sent_hook=on_sent,
        parallel_prompts=args.parallel,
        model_step_seconds=0.01,
        preview_method=args.preview_method,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def dump() -> None:
        target = Path(args.frames_file)
        tmp = target.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(s) + "\n" for s in stamps))
        tmp.rename(target)
        stamps.clear()

    async with running(settings) as sim:
        assert sim.api is not None
        sim.faults.stall = args.stalled
        loop.add_signal_handler(signal.SIGUSR1, dump)
        loop.add_signal_handler(signal.SIGUSR2, lambda: setattr(sim.faults, "stall", False))
        Path(args.ready_file).write_text(json.dumps({"url": sim.comfy_url, "pid": os.getpid()}) + "\n")
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.simproc")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--frames-file", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--stalled", action="store_true")
    parser.add_argument("--preview-method", default="none", help="as ComfyUI's: samplers send previews unless none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
