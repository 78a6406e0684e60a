"""Client library of the generation service, for other Python services.

    from generation_client import AsyncGenerationClient

    async with AsyncGenerationClient("127.0.0.1:50051", token="...") as client:
        async for event in client.generate(template="ace_step_instrumental", params={"tags": "lofi", "seconds": 12}):
            if event_kind(event) == "output_ready":
                print(event.output_ready.output.url)

``GenerationClient`` is the blocking twin (Flask, scripts). Events and runs are the service's protobuf
messages (typed: see generation_service/v1/generation_pb2.pyi); failures raise GenerationClientError
subclasses.
"""

from generation_client.aio import AsyncGenerationClient
from generation_client.errors import (
    AuthenticationError,
    ConflictError,
    GenerationClientError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
)
from generation_client.requests import TERMINAL_KINDS, Param, Workflow, event_kind
from generation_client.sync import GenerationClient
from generation_service.v1 import generation_pb2 as messages

__all__ = [
    "TERMINAL_KINDS",
    "AsyncGenerationClient",
    "AuthenticationError",
    "ConflictError",
    "GenerationClient",
    "GenerationClientError",
    "InvalidRequestError",
    "NotFoundError",
    "OverloadedError",
    "Param",
    "UnavailableError",
    "Workflow",
    "event_kind",
    "messages",
]
