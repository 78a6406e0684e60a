"""Reading one template (a manifest plus its API-format workflow) and checking everything in it.

Every problem of a file is collected before anything is raised, so one ``TemplateLoadError`` names them
all: a JSON error, an unknown key, a target node or input missing from the workflow, a target that is a
link, a media parameter aimed at the wrong loader, a default outside its own bounds or choices.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from comfy_generation.runstore import MediaKind
from generation_service import workflow as workflows
from generation_service.errors import InvalidWorkflow

from .errors import FileProblem, TemplateLoadError
from .model import Param, ParamType, Scalar, Target, Template
from .values import parse_value, shown

MANIFEST_SUFFIX = ".template.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PARAM_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MANIFEST_KEYS = {"description", "media", "workflow", "parameters", "comment"}
PARAM_KEYS = {"type", "description", "default", "min", "max", "step", "choices", "max_length", "targets"}
SEED_MAX = 0xFFFFFFFFFFFFFFFF  # KSampler's seed range
PRODUCED = (MediaKind.IMAGE, MediaKind.AUDIO, MediaKind.VIDEO, MediaKind.MODEL)
# The input each core loader reads its file name from; media parameters must target these (or a custom
# node's input holding a file name).
LOADERS: dict[ParamType, dict[str, str]] = {
    ParamType.IMAGE: {"LoadImage": "image", "LoadImageMask": "image"},
    ParamType.AUDIO: {"LoadAudio": "audio"},
    ParamType.VIDEO: {"LoadVideo": "file"},
}


class _Broken(Exception):
    """A problem that stops reading the file any further."""

    def __init__(self, path: Path, message: str) -> None:
        self.problem = FileProblem(path, message)


def template_name(manifest_path: Path) -> str:
    return manifest_path.name.removesuffix(MANIFEST_SUFFIX)


def load_template(manifest_path: Path) -> Template:
    """Load and validate one ``<name>.template.json``; raises TemplateLoadError naming every problem."""
    try:
        return _load(manifest_path)
    except _Broken as broken:
        raise TemplateLoadError((broken.problem,)) from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _Broken(path, f"{what} file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _Broken(path, f"cannot read the {what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _Broken(path, f"the {what} is not valid JSON: {exc}") from None


def _load(manifest_path: Path) -> Template:
    manifest = _read_json(manifest_path, "manifest")
    if not isinstance(manifest, dict):
        raise _Broken(manifest_path, "the manifest must be a JSON object")
    problems: list[str] = []
    name = template_name(manifest_path)
    if not NAME_RE.fullmatch(name):
        problems.append(f"the file name gives the template name {name!r}: use lowercase letters, digits, _ and -")
    problems += [
        f"unknown key {key!r} (allowed: {', '.join(sorted(MANIFEST_KEYS))})" for key in manifest.keys() - MANIFEST_KEYS
    ]
    description = manifest.get("description")
    if not isinstance(description, str) or not description.strip():
        problems.append("'description' must be a non-empty string")
    media = manifest.get("media")
    if media not in [k.value for k in PRODUCED]:
        problems.append(f"'media' must be one of {', '.join(k.value for k in PRODUCED)}, not {shown(media)}")
    workflow_path, graph = _workflow(manifest_path, manifest.get("workflow"))
    params = _params(manifest.get("parameters"), graph, problems)
    if problems:
        raise TemplateLoadError(tuple(FileProblem(manifest_path, p) for p in problems))
    return Template(name, str(description), MediaKind(str(media)), params, graph, manifest_path, workflow_path)


def _workflow(manifest_path: Path, ref: object) -> tuple[Path, dict[str, Any]]:
    if not isinstance(ref, str) or not ref:
        raise _Broken(manifest_path, "'workflow' must name the API-format workflow file next to the manifest")
    folder = manifest_path.parent.resolve()
    path = (manifest_path.parent / ref).resolve()
    if not path.is_relative_to(folder):
        raise _Broken(manifest_path, f"'workflow' {ref!r} points outside the template folder")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _Broken(manifest_path, f"'workflow' {ref!r} does not exist next to the manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _Broken(path, f"cannot read the workflow: {exc}") from None
    try:
        return path, workflows.parse(text)
    except InvalidWorkflow as exc:
        raise _Broken(path, str(exc)) from None


def _params(spec: object, graph: dict[str, Any], problems: list[str]) -> tuple[Param, ...]:
    if spec is None:
        return ()
    if not isinstance(spec, dict):
        problems.append("'parameters' must be an object mapping parameter names to their definitions")
        return ()
    params: list[Param] = []
    owners: dict[Target, str] = {}
    for name, definition in spec.items():
        found: list[str] = []
        param = _param(name, definition, found)
        if param is not None:
            found += _target_problems(param, graph)
            for target in param.targets:
                if target in owners:
                    found.append(f"{target} is already set by parameter {owners[target]!r}")
                owners.setdefault(target, name)
            params.append(param)
        problems += [f"parameter {name!r}: {p}" for p in found]
    return tuple(params)


def _param(name: str, spec: object, problems: list[str]) -> Param | None:
    if not PARAM_RE.fullmatch(name):
        problems.append("names use lowercase letters, digits and _, starting with a letter")
    if not isinstance(spec, dict):
        problems.append("must be an object with type, description and targets")
        return None
    problems += [f"unknown key {k!r} (allowed: {', '.join(sorted(PARAM_KEYS))})" for k in spec.keys() - PARAM_KEYS]
    try:
        kind = ParamType(str(spec.get("type")))
    except ValueError:
        problems.append(f"'type' must be one of {', '.join(t.value for t in ParamType)}, not {shown(spec.get('type'))}")
        return None
    description = spec.get("description")
    if not isinstance(description, str) or not description.strip():
        problems.append("'description' must be a non-empty string")
    param = Param(
        name=name,
        type=kind,
        description=str(description or ""),
        targets=_targets(spec.get("targets"), problems),
        minimum=_number(spec, "min", kind, problems),
        maximum=_number(spec, "max", kind, problems),
        step=_positive(spec, "step", kind is ParamType.INT, problems),
        choices=_choices(spec, kind, problems),
        max_length=_positive(spec, "max_length", kind is ParamType.STRING, problems),
    )
    if kind is ParamType.SEED:
        param = _seed_bounds(param)
    if param.minimum is not None and param.maximum is not None and param.minimum > param.maximum:
        problems.append(f"'min' {param.minimum} is above 'max' {param.maximum}")
    return _with_default(param, spec, problems)


def _seed_bounds(param: Param) -> Param:
    low = 0 if param.minimum is None else param.minimum
    high = SEED_MAX if param.maximum is None else param.maximum
    return Param(**{**param.__dict__, "minimum": low, "maximum": high})


def _with_default(param: Param, spec: dict[str, Any], problems: list[str]) -> Param:
    if "default" not in spec or spec["default"] is None:
        return param
    if param.type.media_kind is not None:
        problems.append("media parameters cannot have a default: the caller always sends the file")
        return param
    try:
        default = parse_value(param, spec["default"])
    except ValueError as exc:
        problems.append(f"the default {shown(spec['default'])} does not satisfy the parameter itself: {exc}")
        return param
    return Param(**{**param.__dict__, "default": default})


def _targets(spec: object, problems: list[str]) -> tuple[Target, ...]:
    if not isinstance(spec, list) or not spec:
        problems.append('\'targets\' must be a non-empty list of {"node": <node id>, "input": <input name>}')
        return ()
    targets = []
    for item in spec:
        if isinstance(item, dict) and isinstance(item.get("node"), str) and isinstance(item.get("input"), str):
            targets.append(Target(item["node"], item["input"]))
        else:
            problems.append(
                f'target {shown(item)} must be {{"node": "<node id as a string>", "input": "<input name>"}}'
            )
    return tuple(targets)


def _number(spec: dict[str, Any], key: str, kind: ParamType, problems: list[str]) -> int | float | None:
    value = spec.get(key)
    if value is None:
        return None
    if kind not in (ParamType.INT, ParamType.FLOAT, ParamType.SEED):
        problems.append(f"'{key}' applies only to int, float and seed parameters")
        return None
    whole = kind is not ParamType.FLOAT
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
        problems.append(f"'{key}' must be a {'whole ' if whole else ''}number, not {shown(value)}")
        return None
    number: int | float = value
    return number


def _positive(spec: dict[str, Any], key: str, applies: bool, problems: list[str]) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if not applies:
        problems.append(f"'{key}' does not apply to a {spec.get('type')} parameter")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"'{key}' must be a positive whole number, not {shown(value)}")
        return None
    return value


def _choices(spec: dict[str, Any], kind: ParamType, problems: list[str]) -> tuple[Scalar, ...]:
    value = spec.get("choices")
    if kind is not ParamType.ENUM:
        if value is not None:
            problems.append("'choices' applies only to enum parameters")
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(c, str | int | float) for c in value):
        problems.append("'choices' must be a non-empty list of strings or numbers")
        return ()
    if len({json.dumps(c) for c in value}) != len(value):
        problems.append("'choices' lists a value twice")
    return tuple(value)


def _fits(kind: ParamType, current: object) -> bool:
    """Whether the workflow's own value at a target has the type the parameter writes there."""
    if kind in (ParamType.INT, ParamType.SEED):
        return isinstance(current, int) and not isinstance(current, bool)
    if kind is ParamType.FLOAT:
        return isinstance(current, int | float) and not isinstance(current, bool)
    if kind is ParamType.BOOL:
        return isinstance(current, bool)
    if kind is ParamType.ENUM:
        return isinstance(current, str | int | float)
    return isinstance(current, str)


def _target_problems(param: Param, graph: dict[str, Any]) -> list[str]:
    problems = []
    for target in param.targets:
        node = graph.get(target.node)
        if node is None:
            problems.append(f"{target}: the workflow has no node {target.node!r}")
            continue
        inputs = node.get("inputs", {})
        class_type = node["class_type"]
        if target.input not in inputs:
            known = ", ".join(sorted(inputs)) or "none"
            problems.append(
                f"{target}: node {target.node} ({class_type}) has no input {target.input!r} (it has: {known})"
            )
            continue
        current = inputs[target.input]
        if isinstance(current, list):
            problems.append(f"{target}: the input is a link from another node; a parameter can only set a value")
        elif not _fits(param.type, current):
            problems.append(
                f"{target}: the input holds {shown(current)}, which a {param.type} parameter cannot replace"
            )
        problems += _loader_problems(param, target, class_type)
    return problems


def _loader_problems(param: Param, target: Target, class_type: str) -> list[str]:
    for kind, loaders in LOADERS.items():
        file_input = loaders.get(class_type)
        if file_input is None:
            continue
        if kind is param.type and target.input != file_input:
            return [f"{target}: {class_type} reads its file name from input {file_input!r}"]
        if kind is not param.type and target.input == file_input:
            return [f"{target}: {class_type} loads {kind.value} files; this is a {param.type} parameter"]
    return []
