"""The node classes the simulator knows, by ``class_type``."""

from __future__ import annotations

from collections.abc import Collection

from .audio import EmptyAudio, LoadAudio, SaveAudio, SaveAudioMP3, SaveAudioOpus
from .base import InputSpec, InterruptProcessingError, NodeContext, NodeDef, NodeOutput
from .image import EmptyImage, ImageBatch, ImageBlur, LoadImage, PreviewImage, SaveImage, SaveImageWebsocket
from .models import MODEL_NODES
from .sampling import SAMPLING_NODES
from .simulated import SimulatedModelNode, SimulatedSampler
from .video import CreateVideo, LoadVideo, SaveVideo, SaveWEBM

_CLASSES: tuple[type[NodeDef], ...] = (
    EmptyImage,
    LoadImage,
    ImageBatch,
    ImageBlur,
    SaveImage,
    PreviewImage,
    SaveImageWebsocket,
    EmptyAudio,
    LoadAudio,
    SaveAudio,
    SaveAudioMP3,
    SaveAudioOpus,
    CreateVideo,
    LoadVideo,
    SaveVideo,
    SaveWEBM,
    SimulatedSampler,
    *MODEL_NODES,
    *SAMPLING_NODES,
)
NODE_CLASSES: dict[str, NodeDef] = {cls.name: cls() for cls in _CLASSES}


def node_classes(without: Collection[str] = ()) -> dict[str, NodeDef]:
    """The classes one ComfyUI offers: every known one but ``without`` (read at call time, so classes a
    benchmark registers late are included)."""
    return {name: node for name, node in NODE_CLASSES.items() if name not in without}


__all__ = [
    "NODE_CLASSES",
    "InputSpec",
    "InterruptProcessingError",
    "NodeContext",
    "NodeDef",
    "NodeOutput",
    "SimulatedModelNode",
    "node_classes",
]
