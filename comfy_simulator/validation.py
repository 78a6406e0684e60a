"""``execution.validate_prompt`` of ComfyUI 0.3.64: the 400 shapes and per-node error types."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping
from typing import Any

from .nodes import NODE_CLASSES, InputSpec, NodeDef
from .paths import Folders

ValidationResult = tuple[bool, list[dict[str, Any]], str]


def full_type_name(klass: type) -> str:
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def _error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _types_match(received: str, expected: str) -> bool:
    if "*" in (received, expected) or received == expected:
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


def _validate_link(
    prompt: dict[str, Any], spec: InputSpec, val: list[Any], validated: dict[str, ValidationResult], folders: Folders
) -> tuple[dict[str, Any] | None, bool]:
    """(error, upstream valid) for a linked input."""
    x, info = spec.name, spec.entry()
    if len(val) != 2:
        message = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
        return _error("bad_linked_input", message, x, input_name=x, input_config=info, received_value=val), True
    o_id = val[0]
    o_class_type = prompt[o_id]["class_type"]
    received_type = NODE_CLASSES[o_class_type].return_types[val[1]]
    if not _types_match(received_type, spec.type_name):
        details = f"{x}, received_type({received_type}) mismatch input_type({spec.type_name})"
        error = _error(
            "return_type_mismatch",
            "Return type mismatch between linked nodes",
            details,
            input_name=x,
            input_config=info,
            received_type=received_type,
            linked_node=val,
        )
        return error, True
    try:
        return None, validate_inputs(prompt, o_id, validated, folders)[0] is not False
    except Exception as ex:
        typ, _, tb = sys.exc_info()
        reason = _error(
            "exception_during_inner_validation",
            "Exception when validating inner node",
            str(ex),
            input_name=x,
            input_config=info,
            exception_message=str(ex),
            exception_type=full_type_name(typ or Exception),
            traceback=traceback.format_tb(tb),
            linked_node=val,
        )
        validated[o_id] = (False, [reason], o_id)
        return None, False


CONVERTERS: dict[str, Any] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _validate_value(inputs: dict[str, Any], spec: InputSpec, node_def: NodeDef) -> dict[str, Any] | None:
    """Convert a widget value in place (like ComfyUI) and check min / max / combo options."""
    x, info = spec.name, spec.entry()
    val = inputs[x]
    try:
        if isinstance(val, dict) and "__value__" in val:
            val = inputs[x] = val["__value__"]
        if spec.type_name in CONVERTERS:
            val = inputs[x] = CONVERTERS[spec.type_name](val)
    except Exception as ex:
        return _error(
            "invalid_input_type",
            f"Failed to convert an input value to a {spec.type_name} value",
            f"{x}, {val}, {ex}",
            input_name=x,
            input_config=info,
            received_value=val,
            exception_message=str(ex),
        )
    if x in node_def.validated_inputs:
        return None
    extra = spec.extra
    if "min" in extra and val < extra["min"]:
        message = "Value {} smaller than min of {}".format(val, extra["min"])
        return _error("value_smaller_than_min", message, x, input_name=x, input_config=info, received_value=val)
    if "max" in extra and val > extra["max"]:
        message = "Value {} bigger than max of {}".format(val, extra["max"])
        return _error("value_bigger_than_max", message, x, input_name=x, input_config=info, received_value=val)
    options = spec.combo_options
    if options is not None and val not in options:
        input_config: Any = info
        list_info = str(options)
        if len(options) > 20:
            list_info, input_config = f"(list of length {len(options)})", None
        details = f"{x}: '{val}' not in {list_info}"
        return _error(
            "value_not_in_list",
            "Value not in list",
            details,
            input_name=x,
            input_config=input_config,
            received_value=val,
        )
    return None


def validate_inputs(
    prompt: dict[str, Any], unique_id: str, validated: dict[str, ValidationResult], folders: Folders
) -> ValidationResult:
    if unique_id in validated:
        return validated[unique_id]
    node = prompt[unique_id]
    inputs: dict[str, Any] = node["inputs"]
    node_def = NODE_CLASSES[node["class_type"]]
    errors: list[dict[str, Any]] = []
    valid = True
    for spec in node_def.inputs(folders):
        if spec.name not in inputs:
            if not spec.optional:
                errors.append(
                    _error("required_input_missing", "Required input is missing", spec.name, input_name=spec.name)
                )
            continue
        if isinstance(inputs[spec.name], list):
            error, upstream_valid = _validate_link(prompt, spec, inputs[spec.name], validated, folders)
            valid = valid and upstream_valid
        else:
            error = _validate_value(inputs, spec, node_def)
        if error is not None:
            errors.append(error)
    if node_def.validated_inputs:
        ret = node_def.validate_inputs(folders, {k: inputs.get(k) for k in node_def.validated_inputs})
        if ret is not True:
            for x in node_def.validated_inputs:
                details = x if ret is False else f"{x} - {ret}"
                errors.append(
                    _error("custom_validation_failed", "Custom validation failed for node", details, input_name=x)
                )
    result: ValidationResult = (False, errors, unique_id) if errors or not valid else (True, [], unique_id)
    validated[unique_id] = result
    return result


def output_order(ids: list[str]) -> list[str]:
    """ComfyUI keeps outputs in a ``set`` (order varies run to run); the simulator uses reversed prompt order."""
    return list(reversed(ids))


def _find_outputs(
    prompt: dict[str, Any], partial_execution_list: list[str] | None, nodes: Mapping[str, NodeDef]
) -> tuple[list[str], dict[str, Any] | None]:
    outputs: list[str] = []
    for x in prompt:
        if not isinstance(prompt[x], dict) or "class_type" not in prompt[x]:
            message = "Cannot execute because a node is missing the class_type property."
            return [], _error("invalid_prompt", message, f"Node ID '#{x}'")
        class_type = prompt[x]["class_type"]
        if class_type not in nodes:
            message = f"Cannot execute because node {class_type} does not exist."
            return [], _error("invalid_prompt", message, f"Node ID '#{x}'")
        if nodes[class_type].output_node and (partial_execution_list is None or x in partial_execution_list):
            outputs.append(x)
    if not outputs:
        return [], _error("prompt_no_outputs", "Prompt has no outputs", "")
    return outputs, None


def _validate_output(
    prompt: dict[str, Any], o: str, validated: dict[str, ValidationResult], folders: Folders
) -> tuple[bool, list[dict[str, Any]]]:
    try:
        valid, reasons, _ = validate_inputs(prompt, o, validated, folders)
        return valid, reasons
    except Exception as ex:
        typ, _, tb = sys.exc_info()
        reasons = [
            _error(
                "exception_during_validation",
                "Exception when validating node",
                str(ex),
                exception_type=full_type_name(typ or Exception),
                traceback=traceback.format_tb(tb),
            )
        ]
        validated[o] = (False, reasons, o)
        return False, reasons


def validate_prompt(
    prompt: dict[str, Any],
    partial_execution_list: list[str] | None,
    folders: Folders,
    nodes: Mapping[str, NodeDef] = NODE_CLASSES,
) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
    """(valid, error, outputs to execute, node_errors), exactly as ComfyUI's ``validate_prompt``.

    ``nodes`` are the classes this ComfyUI has. Only the first pass checks against them: once it passed,
    every class_type of the prompt is one of them, so the input checks may look classes up in the full table.
    """
    outputs, error = _find_outputs(prompt, partial_execution_list, nodes)
    if error is not None:
        return False, error, [], {}
    good_outputs: list[str] = []
    errors: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    validated: dict[str, ValidationResult] = {}
    for o in output_order(outputs):
        valid, reasons = _validate_output(prompt, o, validated, folders)
        if valid is True:
            good_outputs.append(o)
            continue
        if reasons:
            errors.append((o, reasons))
        for node_id, (node_valid, node_reasons, _) in validated.items():
            if node_valid is not True and node_reasons:
                if node_id not in node_errors:
                    class_type = prompt[node_id]["class_type"]
                    node_errors[node_id] = {"errors": node_reasons, "dependent_outputs": [], "class_type": class_type}
                node_errors[node_id]["dependent_outputs"].append(o)
    if not good_outputs:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in errors for e in reasons)
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
        return False, error, [], node_errors
    return True, None, good_outputs, node_errors
