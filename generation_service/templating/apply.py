"""Filling a request's parameter values into a copy of a template's workflow.

Values are set on the parsed workflow (``graph[node]["inputs"][input] = value``), never by text
substitution, so prompts with quotes, backslashes, newlines or any unicode land verbatim.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from comfy_generation.runstore import RunStore

from .errors import Problem, TemplateRequestError
from .media import DEFAULT_MAX_MEDIA_BYTES, PendingUpload, resolve_media
from .model import Param, ParamType, ParamValue, Scalar, Template
from .values import RANDOM, parse_value

RANDOM_SEED_SPAN = 2**32  # drawn seeds: 0 .. 2**32-1 from the seed's minimum, as the original system drew them
_system_random = random.SystemRandom()


@dataclass(frozen=True)
class AppliedTemplate:
    """A template filled in for one run.

    ``workflow``: the graph to submit, once ``bind_uploads`` has set the uploaded file names (without
    uploads it is ready as is). ``values``: every parameter's effective value, JSON-safe, for the run's
    metadata (defaults included, drawn seeds as numbers, media as the run reference or a short
    description of the bytes). ``seeds``: the value of every seed parameter; ``seed`` is the first.
    """

    template: str
    workflow: dict[str, Any]
    values: dict[str, Any]
    seeds: dict[str, int]
    uploads: tuple[PendingUpload, ...]

    @property
    def seed(self) -> int | None:
        return next(iter(self.seeds.values()), None)


def apply(
    template: Template,
    params: Mapping[str, ParamValue],
    *,
    run_id: str,
    store: RunStore | None = None,
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    rng: random.Random | None = None,
) -> AppliedTemplate:
    """Check every value and fill them into a copy of the workflow; no I/O beyond reading run metadata.

    Raises TemplateRequestError naming every unknown, missing, mistyped or out-of-range parameter at
    once. ``run_id`` names the per-run upload files; ``store`` resolves ``run:`` references.
    """
    problems = [_unknown(name, template) for name in params if template.param(name) is None]
    graph = copy.deepcopy(template.workflow)
    values: dict[str, Any] = {}
    seeds: dict[str, int] = {}
    uploads: list[PendingUpload] = []
    for param in template.params:
        try:
            if param.type.media_kind is not None:
                upload = _media(param, params, run_id, store, max_media_bytes)
                uploads.append(upload)
                values[param.name] = _describe_media(params[param.name])
                _set(graph, param, upload.name)
                continue
            value = _scalar(param, params, rng or _system_random)
        except ValueError as exc:
            problems.append(Problem(param.name, str(exc)))
            continue
        if param.type is ParamType.SEED:
            seeds[param.name] = int(value)
        values[param.name] = value
        _set(graph, param, value)
    if problems:
        raise TemplateRequestError(template.name, tuple(problems))
    return AppliedTemplate(template.name, graph, values, seeds, tuple(uploads))


def bind_uploads(workflow: dict[str, Any], uploads: Sequence[PendingUpload], names: Sequence[str]) -> dict[str, Any]:
    """A copy of ``workflow`` whose media inputs hold the names the backend returned for ``uploads``
    (``names[i]`` is what ``ComfyBackend.upload`` answered for ``uploads[i]``)."""
    if len(names) != len(uploads):
        raise ValueError(f"{len(uploads)} uploads but {len(names)} names")
    bound = copy.deepcopy(workflow)
    for upload, name in zip(uploads, names, strict=True):
        for target in upload.targets:
            bound[target.node]["inputs"][target.input] = name
    return bound


def _unknown(name: str, template: Template) -> Problem:
    known = [p.name for p in template.params]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listing = ", ".join(known) if known else "none"
    return Problem(name, f"unknown parameter; {hint}template {template.name!r} takes: {listing}")


def _scalar(param: Param, params: Mapping[str, ParamValue], rng: random.Random) -> Scalar:
    if param.name in params:
        value = parse_value(param, params[param.name])
    elif param.default is None:
        raise ValueError(f"missing: send a {param.type} value ({param.description})")
    else:
        value = param.default
    if value == RANDOM and param.type is ParamType.SEED:
        low = int(param.minimum or 0)
        high = min(
            int(param.maximum if param.maximum is not None else low + RANDOM_SEED_SPAN - 1), low + RANDOM_SEED_SPAN - 1
        )
        value = rng.randint(low, high)
    return value


def _media(
    param: Param, params: Mapping[str, ParamValue], run_id: str, store: RunStore | None, max_bytes: int
) -> PendingUpload:
    if param.name not in params:
        kind = param.type.value
        raise ValueError(f"missing: send the {kind} file's bytes or run:<run_id>/{kind}/<index> ({param.description})")
    return resolve_media(param, params[param.name], run_id=run_id, store=store, max_bytes=max_bytes)


def _describe_media(value: ParamValue) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return f"upload: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}"
    return str(value)


def _set(graph: dict[str, Any], param: Param, value: Scalar) -> None:
    for target in param.targets:
        graph[target.node]["inputs"][target.input] = value
