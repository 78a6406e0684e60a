"""``python -m comfy_simulator``: run the simulator until SIGINT / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import tempfile
from pathlib import Path

from .app import running
from .settings import SimulatorSettings

ENV = "COMFY_SIMULATOR_"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m comfy_simulator",
        description="Simulated ComfyUI 0.3.64 server (and SwarmUI /ComfyBackendDirect/ proxy). "
        "Every flag can also be given as an environment variable, shown in brackets.",
    )
    parser.add_argument(
        "--listen",
        default=env.get(ENV + "LISTEN", "127.0.0.1:8188"),
        help="HOST:PORT to listen on; port 0 picks a free port [COMFY_SIMULATOR_LISTEN]",
    )
    parser.add_argument(
        "--data-dir",
        default=env.get(ENV + "DATA_DIR"),
        help="folder holding output/, temp/, input/; default: a new temp dir [COMFY_SIMULATOR_DATA_DIR]",
    )
    parser.add_argument(
        "--backend-ids",
        default=env.get(ENV + "BACKEND_IDS", "0"),
        help="comma-separated SwarmUI backend ids accepted in X-Swarm-Backend-ID [COMFY_SIMULATOR_BACKEND_IDS]",
    )
    parser.add_argument(
        "--blur-seconds-per-megapixel",
        type=float,
        default=float(env.get(ENV + "BLUR_SECONDS_PER_MEGAPIXEL", "0.05")),
        help="extra ImageBlur time per megapixel [COMFY_SIMULATOR_BLUR_SECONDS_PER_MEGAPIXEL]",
    )
    parser.add_argument(
        "--model-step-seconds",
        type=float,
        default=float(env.get(ENV + "MODEL_STEP_SECONDS", "0.05")),
        help="time of one simulated sampling step (KSampler) [COMFY_SIMULATOR_MODEL_STEP_SECONDS]",
    )
    parser.add_argument(
        "--log-level", default=env.get(ENV + "LOG_LEVEL", "INFO"), help="logging level [COMFY_SIMULATOR_LOG_LEVEL]"
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="comfy-simulator-"))
    settings = SimulatorSettings(
        data_dir=data_dir,
        host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        backend_ids=tuple(int(x) for x in args.backend_ids.split(",") if x.strip()),
        blur_seconds_per_megapixel=args.blur_seconds_per_megapixel,
        model_step_seconds=args.model_step_seconds,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings) as sim:
        logging.getLogger("comfy_simulator").info(
            "comfy_simulator ready: comfy_url=%s swarm_url=%s data_dir=%s", sim.comfy_url, sim.swarm_url, data_dir
        )
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
