"""Template errors: a request the templates cannot fill, and a template file that cannot be used.

GenerationError (generation_service.errors)
└── TemplateError
    ├── TemplateRequestError   unknown template, unknown / missing / mistyped / out-of-range parameters,
    │                          unusable media (every problem of one request at once) → INVALID_ARGUMENT
    └── TemplateLoadError      a template file is broken (every problem of every file at once);
                               at start-up it stops the service, on reload the file is skipped
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from comfy_generation.runstore.events import DESCRIPTION_CHARS
from generation_service.errors import MAX_MESSAGE_CHARS, MAX_PROBLEMS, GenerationError, excerpt

PARAM_NAME_CHARS = 100  # a parameter name quoted back (an unknown one may be of any length)


class TemplateError(GenerationError):
    """Base class of the template errors."""


@dataclass(frozen=True)
class Problem:
    """One problem with a request: ``param`` is the parameter's name, or None for the template itself."""

    param: str | None
    message: str

    @property
    def field(self) -> str:
        """Where the problem is, for a ``google.rpc.BadRequest`` field violation: ``template`` or
        ``params.<name>``."""
        return "template" if self.param is None else f"params.{excerpt(self.param, PARAM_NAME_CHARS)}"

    @property
    def description(self) -> str:
        """The message, cut to DESCRIPTION_CHARS."""
        return excerpt(self.message, DESCRIPTION_CHARS)

    def describe(self) -> str:
        return f"{self.field}: {self.description}"


class TemplateRequestError(TemplateError):
    """The request cannot be filled into the template; ``problems`` names the parameters at fault (the
    first MAX_PROBLEMS of them; ``omitted`` counts the rest)."""

    def __init__(self, template: str, problems: tuple[Problem, ...]) -> None:
        self.template = template
        self.problems = problems[:MAX_PROBLEMS]
        self.omitted = len(problems) - len(self.problems)
        lines = "; ".join(p.describe() for p in self.problems)
        if self.omitted:
            lines += f"; and {self.omitted} more"
        super().__init__(excerpt(f"template {excerpt(template, PARAM_NAME_CHARS)!r}: {lines}", MAX_MESSAGE_CHARS))


@dataclass(frozen=True)
class FileProblem:
    """One problem in one template file."""

    path: Path
    message: str

    def describe(self) -> str:
        return f"{self.path}: {self.message}"


class TemplateLoadError(TemplateError):
    """One or more template files are broken; ``problems`` names each file and what is wrong in it."""

    def __init__(self, problems: tuple[FileProblem, ...]) -> None:
        self.problems = problems
        super().__init__("broken template files: " + "; ".join(p.describe() for p in problems))
