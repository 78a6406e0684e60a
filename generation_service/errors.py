"""The service's exception tree. The runner and the backend client raise these; the servicer's one table
maps them to gRPC codes (TemplateRequestError, from the templating package, is mapped there too).

GenerationError
├── InvalidRequest           a field of the request is malformed            → INVALID_ARGUMENT
│   └── InvalidWorkflow      the request's workflow is malformed            → INVALID_ARGUMENT
├── WorkflowRejected         the backend's validation rejected it           → INVALID_ARGUMENT
├── RunNotFound              no run has this id                             → NOT_FOUND
├── TemplateNotFound         no template has this name                      → NOT_FOUND
├── RequestConflict          a request_id reused for another request        → FAILED_PRECONDITION
├── RunDamaged               the run's folder in run storage is damaged     → DATA_LOSS
├── NoCapableBackend         no backend has the workflow's nodes and labels → FAILED_PRECONDITION
├── TooManyRuns              the in-flight bound is reached                 → RESOURCE_EXHAUSTED (+ RetryInfo)
│   └── PoolFull             every capable backend holds its most queued    → RESOURCE_EXHAUSTED (+ RetryInfo)
├── StorageUnavailable       run storage cannot be written (full disk)      → UNAVAILABLE
├── BackendUnavailable       the backend cannot be reached / answers 5xx    → UNAVAILABLE
├── BackendProtocolError     the backend answered something we cannot read  → UNAVAILABLE
└── DiscoveryRefused         SwarmUI refused its backend list (credential   → not mapped: raised only by
                             or permission missing)                           background backend discovery

Messages quote the caller's input (and the backend echoes it back), yet they end up in a gRPC status
(trailers: a default client accepts 8 KiB of metadata) and in run storage (ListRuns pages: 4 MiB). So
every quoted value is an ``excerpt`` and a problem list keeps its first MAX_PROBLEMS entries.
"""

from __future__ import annotations

from comfy_generation.runstore.events import NodeProblem
from comfy_generation.runstore.schema import EXCERPT_CHARS, cut_text
from comfy_generation.runstore.schema import MAX_MESSAGE_CHARS as MAX_MESSAGE_CHARS

MAX_PROBLEMS = 20  # problems one error names; the rest are counted


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text``, cut to at most ``limit`` characters (the last one an ellipsis) when it is longer."""
    return cut_text(text, limit)


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


class RunDamaged(GenerationError):
    """The run's folder in run storage cannot be read (a damaged or hand-edited record or journal)."""


class NoCapableBackend(GenerationError):
    """No backend of the pool offers every node class (or label) the run needs."""


class StorageUnavailable(GenerationError):
    """Run storage cannot take writes right now (full, read-only or gone)."""


class TooManyRuns(GenerationError):
    """The service runs as many runs as it may; ``retry_after_s`` is when trying again makes sense."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


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


class PoolFull(TooManyRuns):
    """Every backend that could take the run already holds as many queued runs as it may."""


class RedisUnavailable(GenerationError):
    """Replica mode: the shared Redis does not answer; runs already going carry on."""


class DiscoveryRefused(GenerationError):
    """SwarmUI refused to list its backends: the Authorization header or ``swarm_token`` cookie it needs is
    missing or wrong, or its user lacks a permission. Retrying does not help until the configuration changes."""
