"""The node classes the simulator knows, by ``class_type``."""

from __future__ import annotations

from .audio import EmptyAudio, LoadAudio, SaveAudio, SaveAudioMP3, SaveAudioOpus
from .base import InputSpec, InterruptProcessingError, NodeContext, NodeDef, NodeOutput
from .image import EmptyImage, ImageBatch, ImageBlur, LoadImage, PreviewImage, SaveImage
from .simulated import SimulatedModelNode, SimulatedSampler
from .video import CreateVideo, SaveVideo, SaveWEBM

NODE_CLASSES: dict[str, NodeDef] = {
    cls.name: cls()
    for cls in (
        EmptyImage,
        LoadImage,
        ImageBatch,
        ImageBlur,
        SaveImage,
        PreviewImage,
        EmptyAudio,
        LoadAudio,
        SaveAudio,
        SaveAudioMP3,
        SaveAudioOpus,
        CreateVideo,
        SaveVideo,
        SaveWEBM,
        SimulatedSampler,
    )
}

__all__ = [
    "NODE_CLASSES",
    "InputSpec",
    "InterruptProcessingError",
    "NodeContext",
    "NodeDef",
    "NodeOutput",
    "SimulatedModelNode",
]
