"""The asyncio client of the generation service."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from generation_client.errors import translate
from generation_client.requests import Param, Workflow, call_metadata, channel_credentials, generate_request
from generation_service.v1 import generation_pb2 as pb
from generation_service.v1 import generation_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # a type that exists only in the generated .pyi
    from generation_service.v1.generation_pb2_grpc import GenerationServiceAsyncStub


T = TypeVar("T")


class AsyncGenerationClient:
    """Calls the generation service from asyncio code. Use as ``async with``, or call ``close()``.

    ``token`` is sent as a bearer token; ``tls``/``ca_pem``/``client_cert`` select TLS (``ca_pem``:
    the CA to trust instead of the system's; ``client_cert``: (key PEM, chain PEM) for mutual TLS).
    Every method raises a GenerationClientError subclass when the call fails.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool = False,
        ca_pem: bytes | None = None,
        client_cert: tuple[bytes, bytes] | None = None,
    ) -> None:
        credentials = channel_credentials(tls, ca_pem, client_cert)
        self._channel = (
            grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
        )
        self._stub: GenerationServiceAsyncStub = pb_grpc.GenerationServiceStub(self._channel)
        self._metadata = call_metadata(token)

    async def __aenter__(self) -> AsyncGenerationClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def generate(
        self,
        workflow: Workflow | None = None,
        *,
        template: str = "",
        params: Mapping[str, Param] | None = None,
        **options: Any,
    ) -> AsyncGenerator[pb.RunEvent, None]:
        """Run a workflow (or a template with params) and yield its events until the terminal one.

        ``options``: name, request_id, include_previews, detach, queue_timeout, execution_timeout (s).
        Leaving the loop early cancels the run unless ``detach=True``.
        """
        request = generate_request(workflow, template=template, params=params, **options)
        async for event in self._stream(self._stub.Generate(request, metadata=self._metadata)):
            yield event

    async def submit(
        self,
        workflow: Workflow | None = None,
        *,
        template: str = "",
        params: Mapping[str, Param] | None = None,
        **options: Any,
    ) -> pb.Run:
        """Start a run and return it at once; follow it with ``watch``."""
        request = generate_request(workflow, template=template, params=params, **options)
        return await self._unary(self._stub.Submit(request, metadata=self._metadata))

    async def watch(self, run_id: str, after_seq: int = 0) -> AsyncGenerator[pb.RunEvent, None]:
        """A run's events after ``after_seq`` (replayed, then live) until its terminal event."""
        call = self._stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=after_seq), metadata=self._metadata)
        async for event in self._stream(call):
            yield event

    async def get(self, run_id: str) -> pb.Run:
        return await self._unary(self._stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=self._metadata))

    async def runs(
        self, statuses: Iterable[pb.RunStatus.ValueType] = (), page_size: int = 100
    ) -> AsyncGenerator[pb.Run, None]:
        """Every run, newest first (pages are fetched as the loop goes)."""
        token = ""
        while True:
            request = pb.ListRunsRequest(page_size=page_size, page_token=token, statuses=list(statuses))
            page = await self._unary(self._stub.ListRuns(request, metadata=self._metadata))
            for run in page.runs:
                yield run
            if not (token := page.next_page_token):
                return

    async def cancel(self, run_id: str, reason: str = "") -> pb.Run:
        """Cancel a run (idempotent) and return it once it has ended."""
        request = pb.CancelRunRequest(run_id=run_id, reason=reason)
        return await self._unary(self._stub.CancelRun(request, metadata=self._metadata))

    async def templates(self) -> list[pb.Template]:
        reply = await self._unary(self._stub.ListTemplates(pb.ListTemplatesRequest(), metadata=self._metadata))
        return list(reply.templates)

    async def backends(self) -> list[pb.Backend]:
        """The backends of the service's pool, and what it knows of each."""
        reply = await self._unary(self._stub.ListBackends(pb.ListBackendsRequest(), metadata=self._metadata))
        return list(reply.backends)

    async def describe(self, name: str) -> pb.Template:
        request = pb.DescribeTemplateRequest(name=name)
        return await self._unary(self._stub.DescribeTemplate(request, metadata=self._metadata))

    @staticmethod
    async def _unary(call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc

    @staticmethod
    async def _stream(call: Any) -> AsyncGenerator[pb.RunEvent, None]:
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc
        finally:
            call.cancel()  # a no-op once the stream ended; ends the call if the caller stopped early
