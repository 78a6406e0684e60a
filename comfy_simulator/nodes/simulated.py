"""Simulated model nodes: they take time and report sampler-like progress, but need no weights.

``SimulatedModelNode`` is the template: a subclass declares its extra inputs and ``produce``s its outputs;
the base runs ``steps`` steps spread over ``seconds``, sending ``progress`` / ``progress_state`` after each
step and stopping at the next step when interrupted, like a real sampler's progress hook. Templates for
ACE-Step, SD3.5 or Wan 2.2 can subclass it with their own inputs / outputs; the simulated ``KSampler``
(``sampling.py``) uses the same ``run_steps`` loop with ComfyUI's own inputs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import numpy as np

from ..paths import Folders
from .base import InputSpec, NodeContext, NodeDef, NodeOutput
from .previews import PreviewMaker, sampler_previews


async def run_steps(ctx: NodeContext, steps: int, seconds: float, previews: PreviewMaker | None = None) -> None:
    """``steps`` sampler steps spread evenly over ``seconds`` (divided by the instance's ``sampler_speed``):
    ``progress`` after each one (with a preview image when ``previews`` makes them), and an
    ``InterruptProcessingError`` at the next step once the prompt is interrupted (comfy's progress hook)."""
    seconds /= ctx.settings.sampler_speed
    started = time.monotonic()
    for step in range(1, steps + 1):
        preview = await previews(step, steps) if previews is not None else None
        delay = started + seconds * step / steps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await ctx.progress(step, steps, preview)


class SimulatedModelNode(NodeDef):
    category = "simulator"
    python_module = "comfy_simulator.nodes.simulated"
    default_steps: ClassVar[int] = 20
    default_seconds: ClassVar[float] = 1.0

    def extra_inputs(self, folders: Folders) -> list[InputSpec]:
        return []

    def produce(self, ctx: NodeContext, **kw: Any) -> tuple[Any, ...]:
        raise NotImplementedError

    def inputs(self, folders: Folders) -> list[InputSpec]:
        return [
            InputSpec("steps", "INT", {"default": self.default_steps, "min": 1, "max": 10000}),
            InputSpec(
                "seconds",
                "FLOAT",
                {
                    "default": self.default_seconds,
                    "min": 0.0,
                    "max": 3600.0,
                    "step": 0.01,
                    "tooltip": "Total run time.",
                },
            ),
            *self.extra_inputs(folders),
        ]

    def previews(self, ctx: NodeContext, **kw: Any) -> PreviewMaker | None:
        return None

    async def execute(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
        await run_steps(ctx, int(kw["steps"]), float(kw["seconds"]), self.previews(ctx, **kw))
        return NodeOutput(self.produce(ctx, **kw))


class SimulatedSampler(SimulatedModelNode):
    """Passes ``images`` through (or a 64×64 black image when none is linked) after ``steps`` steps."""

    name = "SimulatedSampler"
    display_name = "Simulated Sampler"
    description = "Imitates a sampler: reports steps evenly over `seconds`, honours interrupts between steps."
    return_types = ("IMAGE",)

    def extra_inputs(self, folders: Folders) -> list[InputSpec]:
        return [InputSpec("images", "IMAGE", {}, optional=True)]

    def previews(self, ctx: NodeContext, **kw: Any) -> PreviewMaker | None:
        images = kw.get("images")
        height, width = images.shape[1:3] if images is not None else (64, 64)
        return sampler_previews(ctx.settings, int(width), int(height))

    def produce(self, ctx: NodeContext, **kw: Any) -> tuple[Any, ...]:
        images = kw.get("images")
        if images is None:
            images = np.zeros((1, 64, 64, 3), np.float32)
        return (images,)
