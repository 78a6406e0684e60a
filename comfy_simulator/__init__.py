"""A protocol-faithful simulator of a ComfyUI 0.3.64 server and of the SwarmUI in front of its ComfyUI
backends (the ``/ComfyBackendDirect/`` proxy, and ``/API/GetNewSession`` + ``/API/ListBackends``).

async with comfy_simulator.running(SimulatorSettings(data_dir=tmp)) as sim:
    sim.comfy_url, sim.swarm_url, sim.faults
async with comfy_simulator.running(SimulatorSettings(data_dir=tmp, swarm_backends=2)) as sim:
    sim.swarm.get(1).comfy.url, await sim.swarm.set_enabled(1, False), await sim.swarm.restart(0)
"""

from __future__ import annotations

from .app import Simulator, running
from .faults import Faults
from .settings import SimulatorSettings

__all__ = ["Faults", "Simulator", "SimulatorSettings", "running"]
