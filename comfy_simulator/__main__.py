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
from .settings import OWNER_PERMISSIONS, PREVIEW_METHODS, SimulatorSettings

ENV = "COMFY_SIMULATOR_"
log = logging.getLogger("comfy_simulator")


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
        help="comma-separated ids of SwarmUI backends that all are this one ComfyUI (ComfyUI API By URL), "
        "the ids X-Swarm-Backend-ID accepts [COMFY_SIMULATOR_BACKEND_IDS]",
    )
    parser.add_argument(
        "--swarm-backends",
        type=int,
        default=int(env.get(ENV + "SWARM_BACKENDS", "0")),
        help="play a SwarmUI with N self-started ComfyUI backends (ids 0..N-1), each its own simulated ComfyUI; "
        "0: every --backend-ids id is this one ComfyUI [COMFY_SIMULATOR_SWARM_BACKENDS]",
    )
    parser.add_argument(
        "--swarm-authorization",
        default=env.get(ENV + "SWARM_AUTHORIZATION", ""),
        help="the Authorization header SwarmUI requires (Network.RequiredAuthorization); empty: none. "
        "Set it through the environment, not the command line [COMFY_SIMULATOR_SWARM_AUTHORIZATION]",
    )
    parser.add_argument(
        "--swarm-permissions",
        default=env.get(ENV + "SWARM_PERMISSIONS", ",".join(OWNER_PERMISSIONS)),
        help="comma-separated permission flags of the SwarmUI user ('*': all) [COMFY_SIMULATOR_SWARM_PERMISSIONS]",
    )
    parser.add_argument(
        "--without-nodes",
        default=env.get(ENV + "WITHOUT_NODES", ""),
        help="comma-separated node classes this ComfyUI does not have (left out of /object_info, "
        "rejected in prompts) [COMFY_SIMULATOR_WITHOUT_NODES]",
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
        "--sampler-speed",
        type=float,
        default=float(env.get(ENV + "SAMPLER_SPEED", "1")),
        help="every simulated sampler (KSampler, SimulatedSampler) runs this many times as fast; "
        "2: half the time per step [COMFY_SIMULATOR_SAMPLER_SPEED]",
    )
    parser.add_argument(
        "--preview-method",
        choices=PREVIEW_METHODS,
        default=env.get(ENV + "PREVIEW_METHOD", "none"),
        help="ComfyUI's --preview-method: with anything but none, samplers send a JPEG preview per step "
        "as binary websocket frames [COMFY_SIMULATOR_PREVIEW_METHOD]",
    )
    parser.add_argument(
        "--log-level", default=env.get(ENV + "LOG_LEVEL", "INFO"), help="logging level [COMFY_SIMULATOR_LOG_LEVEL]"
    )
    return parser.parse_args(argv)


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="comfy-simulator-"))
    settings = SimulatorSettings(
        data_dir=data_dir,
        host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        backend_ids=tuple(int(x) for x in _split(args.backend_ids)),
        swarm_backends=args.swarm_backends,
        swarm_authorization=args.swarm_authorization,
        swarm_permissions=tuple(_split(args.swarm_permissions)),
        without_nodes=frozenset(_split(args.without_nodes)),
        blur_seconds_per_megapixel=args.blur_seconds_per_megapixel,
        model_step_seconds=args.model_step_seconds,
        sampler_speed=args.sampler_speed,
        preview_method=args.preview_method,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings) as sim:
        log.info("comfy_simulator ready: comfy_url=%s swarm_url=%s data_dir=%s", sim.comfy_url, sim.swarm_url, data_dir)
        for backend_id, backend in sorted(sim.swarm.backends.items()):
            log.info("SwarmUI backend %d (%s): comfy_url=%s", backend_id, backend.type, backend.comfy.url)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
