"""What a template is: an API-format workflow plus typed parameters that point into it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from comfy_generation.runstore import MediaKind

Scalar = str | int | float | bool
"""A parameter's default, bound or choice as the manifest writes it."""

ParamValue = str | int | float | bool | bytes
"""A value as a request carries it: strings are parsed per type; ``bytes`` only for media parameters."""


class ParamType(StrEnum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    SEED = "seed"  # an int, or "random": drawn per run and reported back
    ENUM = "enum"
    IMAGE = "image"  # media: the caller's bytes, or run:<run_id>/<type>/<index>
    AUDIO = "audio"
    VIDEO = "video"

    @property
    def media_kind(self) -> MediaKind | None:
        """The kind of file a media parameter takes; None for the others."""
        return {"image": MediaKind.IMAGE, "audio": MediaKind.AUDIO, "video": MediaKind.VIDEO}.get(self.value)


@dataclass(frozen=True)
class Target:
    """One workflow input a parameter sets: ``workflow[node]["inputs"][input]``."""

    node: str
    input: str

    def __str__(self) -> str:
        return f"node {self.node} input {self.input!r}"


@dataclass(frozen=True)
class Param:
    """One parameter. ``default`` None means required. ``minimum``/``maximum`` bound int, float and seed
    values; ``step`` makes an int count from ``minimum`` in steps (Wan's 4n+1 frames); ``choices`` are an
    enum's values; ``max_length`` bounds a string (in characters)."""

    name: str
    type: ParamType
    description: str
    targets: tuple[Target, ...]
    default: Scalar | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    step: int | None = None
    choices: tuple[Scalar, ...] = ()
    max_length: int | None = None

    @property
    def required(self) -> bool:
        return self.default is None

    def describe(self) -> dict[str, Any]:
        """The parameter as JSON (DescribeTemplate, ``genctl``): only the fields that apply."""
        out: dict[str, Any] = {"name": self.name, "type": self.type.value, "description": self.description}
        optional: dict[str, Any] = {
            "default": self.default,
            "min": self.minimum,
            "max": self.maximum,
            "step": self.step,
            "choices": list(self.choices) or None,
            "max_length": self.max_length,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        out["required"] = self.required
        return out


@dataclass(frozen=True)
class Template:
    """A loaded, validated template. ``workflow`` is never modified: ``apply`` works on a copy."""

    name: str
    description: str
    media: MediaKind
    params: tuple[Param, ...]
    workflow: dict[str, Any]
    manifest_path: Path
    workflow_path: Path

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "media": self.media.value,
            "parameters": [p.describe() for p in self.params],
        }
