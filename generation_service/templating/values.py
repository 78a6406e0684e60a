"""Parsing one parameter value per type, and checking it against the parameter's bounds and choices.

Values arrive as JSON scalars (a manifest's default) or as request values: typed (int, float, bool) or
text ("12" for an int is fine). Every failure is a ``ValueError`` whose message says what to send instead.
"""

from __future__ import annotations

import math

from generation_service.errors import excerpt

from .model import Param, ParamType, Scalar

RANDOM = "random"
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def shown(value: object) -> str:
    """A value as it appears in messages: its repr, cut short."""
    return excerpt(repr(value), 60)


def _number_text(value: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError("is empty")
    return text


def parse_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{shown(value)} is not a whole number; send one such as 20")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        number = value
    else:
        try:
            return int(_number_text(value))
        except ValueError:  # also past int()'s digit limit (sys.get_int_max_str_digits)
            try:
                number = float(value)  # "1e3" is a whole number too
            except ValueError:
                raise ValueError(f"{shown(value)} is not a whole number; send one such as 20") from None
    if math.isfinite(number) and number.is_integer():
        return int(number)
    raise ValueError(f"{shown(value)} is not a whole number; send one such as 20")


def parse_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{shown(value)} is not a number; send one such as 4.5")
    try:
        number = float(_number_text(value) if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(f"{shown(value)} is not a number; send one such as 4.5") from None
    if not math.isfinite(number):
        raise ValueError(f"{shown(value)} is not a finite number; send one such as 4.5")
    return number


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{shown(value)} is not a yes/no value; send true or false")


def parse_enum(param: Param, value: object) -> Scalar:
    for choice in param.choices:
        same_type = type(choice) is type(value) or (
            isinstance(choice, int | float) and isinstance(value, int | float) and not isinstance(value, bool)
        )
        if (same_type and choice == value) or (isinstance(value, str) and str(choice) == value.strip()):
            return choice
    options = ", ".join(str(c) for c in param.choices)
    raise ValueError(f"{shown(value)} is not one of the choices; send one of: {options}")


def _check_bounds(param: Param, number: int | float) -> None:
    low, high = param.minimum, param.maximum
    span = f"from {low} to {high}" if low is not None and high is not None else ""
    if low is not None and number < low:
        raise ValueError(f"{shown(number)} is below the minimum {low}; send a value {span or f'of at least {low}'}")
    if high is not None and number > high:
        raise ValueError(f"{shown(number)} is above the maximum {high}; send a value {span or f'of at most {high}'}")
    if param.step and param.type is ParamType.INT:
        base = int(low or 0)
        offset = (int(number) - base) % param.step
        if offset:
            below, above = int(number) - offset, int(number) - offset + param.step
            allowed = ", ".join(str(base + i * param.step) for i in range(3))
            raise ValueError(
                f"{shown(number)} is not allowed: values go in steps of {param.step} ({allowed}, ...); "
                f"send {shown(below)} or {shown(above)}"
            )


def parse_value(param: Param, value: object) -> Scalar:
    """The value converted to the parameter's type and checked; seeds may come back as ``"random"``."""
    kind = param.type
    if kind is ParamType.STRING:
        if not isinstance(value, str):
            raise ValueError(f"{shown(value)} is not text; send a string")
        if param.max_length is not None and len(value) > param.max_length:
            raise ValueError(f"is {len(value)} characters long; send at most {param.max_length}")
        return value
    if kind is ParamType.ENUM:
        return parse_enum(param, value)
    if kind is ParamType.BOOL:
        return parse_bool(value)
    number: int | float
    if kind is ParamType.SEED:
        if isinstance(value, str) and value.strip().lower() == RANDOM:
            return RANDOM
        try:
            number = parse_int(value)
        except ValueError:
            raise ValueError(f'{shown(value)} is not a seed; send a whole number or "random"') from None
    else:
        number = parse_float(value) if kind is ParamType.FLOAT else parse_int(value)
    _check_bounds(param, number)
    return number
