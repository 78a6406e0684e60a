"""The service's exception tree. The backend client raises these; the servicer maps them to gRPC codes.

GenerationError
├── InvalidWorkflow          the request's workflow is malformed            → INVALID_ARGUMENT
├── WorkflowRejected         the backend's validation rejected it           → INVALID_ARGUMENT
├── BackendUnavailable       the backend cannot be reached / answers 5xx    → UNAVAILABLE
└── BackendProtocolError     the backend answered something we cannot read  → UNAVAILABLE
"""

from __future__ import annotations

from dataclasses import dataclass


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

    def describe(self) -> str:
        where = f"node {self.node_id} ({self.class_type})" if self.node_id else "workflow"
        if self.input_name:
            where += f" input {self.input_name!r}"
        detail = f": {self.details}" if self.details and self.details != self.input_name else ""
        return f"{where}: {self.message}{detail} [{self.type}]"


class WorkflowRejected(GenerationError):
    """The backend refused the workflow; ``problems`` names every node and input at fault."""

    def __init__(self, summary: str, problems: tuple[NodeProblem, ...]) -> None:
        self.summary = summary
        self.problems = problems
        lines = "; ".join(p.describe() for p in problems)
        super().__init__(f"{summary}: {lines}" if lines else summary)


class BackendUnavailable(GenerationError):
    """The backend could not be reached, or answered with a server error."""


class BackendProtocolError(GenerationError):
    """The backend answered with something that does not follow the ComfyUI protocol."""
