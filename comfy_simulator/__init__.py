"""A protocol-faithful simulator of a ComfyUI 0.3.64 server and of SwarmUI's ``/ComfyBackendDirect/`` proxy.

async with comfy_simulator.running(SimulatorSettings(data_dir=tmp)) as sim:
    sim.comfy_url, sim.swarm_url, sim.faults
"""

from __future__ import annotations

from .app import Simulator, running
from .faults import Faults
from .settings import SimulatorSettings

__all__ = ["Faults", "Simulator", "SimulatorSettings", "running"]
