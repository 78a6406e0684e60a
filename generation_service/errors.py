"""The service's exception tree. The backend client raises these; the servicer maps them to gRPC codes.

GenerationError
├── InvalidWorkflow          the request's workflow is malformed            → INVALID_ARGUMENT
├── WorkflowRejected         the backend's validation rejected it           → INVALID_ARGUMENT
├── BackendUnavailable       the backend cannot be reached / answers 5xx    → UNAVAILABLE
└── BackendProtocolError     the backend answered something we cannot read  → UNAVAILABLE

Messages quote the caller's input (and the backend echoes it back), yet they end up in a gRPC status
(trailers: a default client accepts 8 KiB of metadata) and in run storage (ListRuns pages: 4 MiB). So
every quoted value is an ``excerpt`` and a problem list keeps its first MAX_PROBLEMS entries.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

EXCERPT_CHARS = 200  # one quoted value: a class type, a node id, a backend message
DESCRIPTION_CHARS = 400  # one problem's description
MAX_PROBLEMS = 20  # problems one error names; the rest are counted
MAX_MESSAGE_CHARS = 2000  # a whole error message


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text``, cut to at most ``limit`` characters (the last one an ellipsis) when it is longer."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


class GenerationError(Exception):
    """Base class of every error the service reports to callers."""


class InvalidRequest(GenerationError):
    """A field of the request is malformed."""


class InvalidWorkflow(InvalidRequest):
    """The workflow in the request is not a usable ComfyUI API-format workflow."""


class RunNotFound(GenerationError):
    """No run has this id."""


class TemplateNotFound(GenerationError):
    """No template has this name."""


class RequestConflict(GenerationError):
    """A request_id was reused for a request that differs from the one it first named."""


class TooManyRuns(GenerationError):
    """The service runs as many runs as it may; ``retry_after_s`` is when trying again makes sense."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class NodeProblem:
    """One validation problem in one node, as ComfyUI reports it."""

    node_id: str
    class_type: str
    type: str
    message: str
    details: str
    input_name: str

    def __post_init__(self) -> None:
        # Every field may echo the caller's workflow (an unknown class type of any length, the value
        # that failed): each is cut here, so no description, status or stored failure can grow with it.
        for field in fields(self):
            object.__setattr__(self, field.name, excerpt(str(getattr(self, field.name))))

    @property
    def field(self) -> str:
        """Where the problem is, for a ``google.rpc.BadRequest`` field violation:
        ``workflow_json.<node>.inputs.<input>``, ``workflow_json.<node>`` or ``workflow_json``."""
        field = f"workflow_json.{self.node_id}" if self.node_id else "workflow_json"
        return f"{field}.inputs.{self.input_name}" if self.input_name else field

    def describe(self) -> str:
        where = f"node {self.node_id} ({self.class_type})" if self.node_id else "workflow"
        if self.input_name:
            where += f" input {self.input_name!r}"
        detail = f": {self.details}" if self.details and self.details != self.input_name else ""
        return excerpt(f"{where}: {self.message}{detail} [{self.type}]", DESCRIPTION_CHARS)


class WorkflowRejected(GenerationError):
    """The backend refused the workflow; ``problems`` names the nodes and inputs at fault (the first
    MAX_PROBLEMS of them; ``omitted`` counts the rest)."""

    def __init__(self, summary: str, problems: tuple[NodeProblem, ...]) -> None:
        self.summary = excerpt(summary)
        self.problems = problems[:MAX_PROBLEMS]
        self.omitted = len(problems) - len(self.problems)
        lines = "; ".join(p.describe() for p in self.problems)
        if self.omitted:
            lines += f"; and {self.omitted} more"
        super().__init__(excerpt(f"{self.summary}: {lines}" if lines else self.summary, MAX_MESSAGE_CHARS))


class BackendUnavailable(GenerationError):
    """The backend could not be reached, or answered with a server error."""

    def __init__(self, message: str) -> None:
        super().__init__(excerpt(message, MAX_MESSAGE_CHARS))  # it may quote the backend's whole answer


class BackendProtocolError(GenerationError):
    """The backend answered with something that does not follow the ComfyUI protocol."""

    def __init__(self, message: str) -> None:
        super().__init__(excerpt(message, MAX_MESSAGE_CHARS))
