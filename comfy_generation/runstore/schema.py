"""Reading stored JSON into typed values: every field checked, one error for anything that is wrong.

Run storage is written only by the service, but it is a shared volume: an operator can hand-edit a record,
a disk can damage one. Readers (the service at start-up, GetRun, the gateway) parse through ``Fields``, so
a damaged record never raises anything but ``DamagedRecord``, which names the run, the file and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)
T = TypeVar("T")

JsonScalar = str | int | float | bool | None
# A JSON value as json.loads returns it (what a template parameter's recorded value may be).
JsonValue = JsonScalar | list["JsonValue"] | dict[str, "JsonValue"]

_MISSING: Any = object()
MAX_TEXT = EXCERPT_CHARS = 200  # how much of a value an error message quotes


class DamagedRecord(ValueError):
    """A stored file of a run cannot be read as what it should be. ``str()`` is safe to show to callers."""

    def __init__(self, run_id: str, file: str, field: str, problem: str) -> None:
        self.run_id, self.file, self.field, self.problem = run_id, file, field, problem
        where = f"{file} field {field!r}" if field else file
        super().__init__(f"run {run_id}: {where}: {problem}")


MAX_MESSAGE_CHARS = 2000  # a whole error message, as events and statuses carry it


def cut_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text``, cut to at most ``limit`` characters (the last one an ellipsis) when it is longer."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def excerpt(value: object, limit: int = MAX_TEXT) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages never echo unbounded input."""
    return cut_text(repr(value), limit)


def loads(raw: bytes, run_id: str, file: str) -> object:
    """Parse stored JSON; too deep, not UTF-8 or not JSON all become DamagedRecord."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise DamagedRecord(run_id, file, "", "nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError; so is a 5,000-digit int
        raise DamagedRecord(run_id, file, "", f"not valid JSON ({str(exc)[:MAX_TEXT]})") from None


class Fields:
    """Typed access to one JSON object of a stored file; ``prefix`` names where it sits (``entities[2].``)."""

    def __init__(self, data: object, run_id: str, file: str, prefix: str = "") -> None:
        self.run_id, self.file, self.prefix = run_id, file, prefix
        if not isinstance(data, dict):
            raise self.damaged("", f"must be a JSON object, not {type(data).__name__}")
        self.data: Mapping[str, object] = data

    def damaged(self, name: str, problem: str) -> DamagedRecord:
        return DamagedRecord(self.run_id, self.file, f"{self.prefix}{name}".rstrip("."), problem)

    def _get(self, name: str, default: object, check: Callable[[object], bool], what: str) -> Any:
        value = self.data.get(name, _MISSING)
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                raise self.damaged(name, "is missing")
            return default
        if not check(value):
            raise self.damaged(name, f"must be {what}, not {excerpt(value)}")
        return value

    def text(self, name: str, default: str | object = _MISSING) -> str:
        return str(self._get(name, default, lambda v: isinstance(v, str), "a string"))

    def integer(self, name: str, default: int | object = _MISSING) -> int:
        value = self._get(name, default, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
        return int(value)

    def number(self, name: str, default: float | None | object = _MISSING) -> float | None:
        def finite(v: object) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        value = self._get(name, default, finite, "a finite number")
        return None if value is None else float(value)

    def flag(self, name: str, default: bool | object = _MISSING) -> bool:
        return bool(self._get(name, default, lambda v: isinstance(v, bool), "true or false"))

    def choice(self, name: str, cls: type[E], default: E | object = _MISSING) -> E:
        value = self._get(name, default, lambda v: v in {m.value for m in cls}, f"one of {[m.value for m in cls]}")
        return cls(value)

    def child(self, name: str, default: Mapping[str, object] | None | object = _MISSING) -> Fields | None:
        value = self._get(name, default, lambda v: isinstance(v, dict), "a JSON object")
        return None if value is None else Fields(value, self.run_id, self.file, f"{self.prefix}{name}.")

    def items(self, name: str, parse: Callable[[Fields], T]) -> tuple[T, ...]:
        """A list of objects, each parsed by ``parse``; missing means empty."""
        values = self._get(name, [], lambda v: isinstance(v, list), "a list")
        return tuple(
            parse(Fields(v, self.run_id, self.file, f"{self.prefix}{name}[{i}].")) for i, v in enumerate(values)
        )

    def values(self, name: str) -> list[object]:
        """A list of anything; missing means empty."""
        return list(self._get(name, [], lambda v: isinstance(v, list), "a list"))

    def strings(self, name: str) -> tuple[str, ...]:
        values = self._get(name, [], lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "strings")
        return tuple(values)

    def json_map(self, name: str) -> dict[str, JsonValue]:
        """A JSON object whose values may be anything JSON (template parameter values)."""
        return dict(self._get(name, {}, lambda v: isinstance(v, dict), "a JSON object"))

    def int_map(self, name: str) -> dict[str, int]:
        def ints(v: object) -> bool:
            return isinstance(v, dict) and all(isinstance(i, int) and not isinstance(i, bool) for i in v.values())

        return dict(self._get(name, {}, ints, "an object of integers"))
