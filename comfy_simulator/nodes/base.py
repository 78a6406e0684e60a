"""Node class model: input specs, ``/object_info`` entries (V1 and V3 styles) and the execution context."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..paths import Folders
from ..settings import SimulatorSettings

MAX_RESOLUTION = 16384


class InterruptProcessingError(Exception):
    """``comfy.model_management.InterruptProcessingException``."""


@dataclass(frozen=True)
class InputSpec:
    """One input. ``io_type`` is a type name, or the option list of a V1 combo. ``config`` None means the
    V1 entry is just ``[type]`` (e.g. ``"audio": ["AUDIO"]``)."""

    name: str
    io_type: str | tuple[str, ...]
    config: dict[str, Any] | None = None
    optional: bool = False

    @property
    def combo_options(self) -> list[Any] | None:
        if isinstance(self.io_type, tuple):
            return list(self.io_type)
        if self.io_type == "COMBO":
            return list((self.config or {}).get("options", []))
        return None

    @property
    def type_name(self) -> str:
        return "COMBO" if isinstance(self.io_type, tuple) else self.io_type

    def entry(self) -> list[Any]:
        """The ``[type, {config}]`` pair as object_info (and validation errors' input_config) show it."""
        head: Any = list(self.io_type) if isinstance(self.io_type, tuple) else self.io_type
        return [head] if self.config is None else [head, dict(self.config)]

    @property
    def extra(self) -> dict[str, Any]:
        return self.config or {}


@dataclass
class NodeOutput:
    """What a node returns: values for linked inputs, and the UI dict of output nodes."""

    outputs: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


@dataclass
class NodeContext:
    """Everything a running node may use."""

    settings: SimulatorSettings
    folders: Folders
    prompt_id: str
    node_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    temp_letters: str
    # (node, value, max, preview) → sends progress_state + progress (and the preview image, ("JPEG" | "PNG",
    # bytes), as a binary frame); raises InterruptProcessingError when interrupted.
    progress_hook: Callable[[str, int, int, tuple[str, bytes] | None], Awaitable[None]]
    is_interrupted: Callable[[], bool] = field(default=lambda: False)

    async def progress(self, value: int, total: int, preview: tuple[str, bytes] | None = None) -> None:
        await self.progress_hook(self.node_id, value, total, preview)

    def throw_if_interrupted(self) -> None:
        if self.is_interrupted():
            raise InterruptProcessingError()

    def png_text(self) -> dict[str, str]:
        """The PNG / container metadata ComfyUI writes: the prompt and each extra_pnginfo entry, as JSON."""
        import json

        text = {"prompt": json.dumps(self.prompt)}
        for key, value in (self.extra_data.get("extra_pnginfo") or {}).items():
            text[key] = json.dumps(value)
        return text


class NodeDef:
    """Base of every simulated node class. Subclasses set the class attributes and implement ``execute``."""

    name: ClassVar[str]
    display_name: ClassVar[str | None] = None
    category: ClassVar[str] = "sdxl"
    description: ClassVar[str] = ""
    python_module: ClassVar[str] = "nodes"
    output_node: ClassVar[bool] = False
    return_types: ClassVar[tuple[str, ...]] = ()
    return_names: ClassVar[tuple[str, ...] | None] = None
    output_tooltips: ClassVar[tuple[str | None, ...] | None] = None
    v3: ClassVar[bool] = False  # object_info in comfy_api V3 style (COMBO type, list hidden, all flags)
    experimental: ClassVar[bool] = False
    deprecated: ClassVar[bool] = False
    # Inputs handed to VALIDATE_INPUTS; their combo / min / max checks are skipped, like ComfyUI does.
    validated_inputs: ClassVar[tuple[str, ...]] = ()

    def inputs(self, folders: Folders) -> list[InputSpec]:
        raise NotImplementedError

    def validate_inputs(self, folders: Folders, values: dict[str, Any]) -> bool | str:
        return True

    def fingerprint(self, folders: Folders, values: dict[str, Any]) -> Any:
        """``IS_CHANGED``: part of the cache key (e.g. the hash of a loaded file)."""
        return None

    async def execute(self, ctx: NodeContext, **kwargs: Any) -> NodeOutput:
        raise NotImplementedError

    def spec(self, folders: Folders, name: str) -> InputSpec | None:
        return next((s for s in self.inputs(folders) if s.name == name), None)

    def object_info(self, folders: Folders) -> dict[str, Any]:
        specs = self.inputs(folders)
        sections: dict[str, dict[str, Any]] = {"required": {}}
        for s in specs:
            sections.setdefault("optional" if s.optional else "required", {})[s.name] = s.entry()
        if self.output_node:
            if self.v3:
                sections["hidden"] = {"prompt": ["PROMPT"], "extra_pnginfo": ["EXTRA_PNGINFO"]}
            else:
                sections["hidden"] = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
        info: dict[str, Any] = {
            "input": sections,
            "input_order": {key: list(value) for key, value in sections.items()},
            "output": list(self.return_types),
            "output_is_list": [False] * len(self.return_types),
            "output_name": list(self.return_names or self.return_types),
        }
        if self.v3:
            info["output_tooltips"] = list(self.output_tooltips or [None] * len(self.return_types))
        info.update(
            name=self.name,
            display_name=self.display_name if (self.v3 or self.display_name) else self.name,
            description=self.description,
            python_module=self.python_module,
            category=self.category,
            output_node=self.output_node,
        )
        if self.v3:
            info.update(deprecated=self.deprecated, experimental=self.experimental, api_node=False)
        else:
            if self.output_tooltips is not None:
                info["output_tooltips"] = list(self.output_tooltips)
            if self.deprecated:
                info["deprecated"] = True
            if self.experimental:
                info["experimental"] = True
        return info
