"""Client library of the generation service, for other Python services.

    from generation_client import AsyncGenerationClient, event_to_dict

    async with AsyncGenerationClient("127.0.0.1:50051", token="...") as client:
        async for event in client.generate(template="ace_step_instrumental", params={"tags": "lofi", "seconds": 12}):
            print(event_to_dict(event))
        run = await client.run(template="solid_image")  # the final Run; RunFailedError if it failed

``GenerationClient`` is the blocking twin (Flask, scripts). Events and runs are the service's protobuf
messages (typed: see comfygen/v1/generation_pb2.pyi); ``event_to_dict``/``message_to_dict`` turn them
into JSON-ready dicts. Failed calls raise GenerationClientError subclasses.
"""

from comfygen.v1 import generation_pb2 as messages
from generation_client.aio import AsyncGenerationClient
from generation_client.dicts import event_to_dict, message_to_dict
from generation_client.errors import (
    AuthenticationError,
    ConflictError,
    GenerationClientError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    RunFailedError,
    UnavailableError,
)
from generation_client.options import RunOptions
from generation_client.requests import TERMINAL_KINDS, Param, Workflow, event_kind
from generation_client.sync import GenerationClient

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
    "RunFailedError",
    "RunOptions",
    "UnavailableError",
    "Workflow",
    "event_kind",
    "event_to_dict",
    "message_to_dict",
    "messages",
]
