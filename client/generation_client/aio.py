"""The asyncio client of the generation service."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

import grpc

from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from generation_client.errors import RunFailedError, translate
from generation_client.options import RunOptions
from generation_client.requests import (
    CHANNEL_OPTIONS,
    DEFAULT_TIMEOUT_S,
    Param,
    Workflow,
    call_metadata,
    call_options,
    channel_credentials,
    run_spec,
)

if TYPE_CHECKING:  # a type that exists only in the generated .pyi
    from comfygen.v1.generation_pb2_grpc import GenerationServiceAsyncStub


T = TypeVar("T")


class AsyncGenerationClient:
    """Calls the generation service from asyncio code. Use as ``async with``, or call ``close()``.
    Create it inside the running event loop (a web app's lifespan or startup hook), not at import time:
    a grpc.aio channel belongs to the loop it was made in.

    ``target``: ``host:port``, or ``dns:///name:port`` to spread calls over every address the name has
    (round robin). ``token`` is sent as a bearer token; ``tls``/``ca_pem``/``client_cert`` select TLS
    (``ca_pem``: the CA to trust instead of the system's; ``client_cert``: (key PEM, chain PEM) for mutual
    TLS). ``timeout``: the default deadline of unary calls in seconds (streams have none unless a call
    sets one); ``wait_for_ready``: wait for the service to become reachable instead of failing at once
    with UNAVAILABLE (within the deadline). Both can be set per call. Idempotent calls are retried on
    UNAVAILABLE. Every method raises a GenerationClientError subclass when the call fails.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool = False,
        ca_pem: bytes | None = None,
        client_cert: tuple[bytes, bytes] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        wait_for_ready: bool = False,
    ) -> None:
        credentials = channel_credentials(tls, ca_pem, client_cert)
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
            if credentials
            else grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        )
        self._stub: GenerationServiceAsyncStub = pb_grpc.GenerationServiceStub(self._channel)
        self._metadata = call_metadata(token)
        self.timeout, self.wait_for_ready = timeout, wait_for_ready

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
        detach: bool = False,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
        **options: Unpack[RunOptions],
    ) -> AsyncGenerator[pb.RunEvent, None]:
        """Run a workflow (or a template with params) and yield its events until the terminal one.
        Leaving the loop early cancels the run unless ``detach=True``."""
        policy = pb.DISCONNECT_POLICY_DETACH if detach else pb.DISCONNECT_POLICY_CANCEL
        request = pb.GenerateRequest(
            spec=run_spec(workflow, template=template, params=params, **options), on_disconnect=policy
        )
        call = self._stub.Generate(request, **self._call_options(timeout, wait_for_ready, stream=True))
        async for reply in self._stream(call):
            yield reply.event

    async def run(
        self,
        workflow: Workflow | None = None,
        *,
        template: str = "",
        params: Mapping[str, Param] | None = None,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
        **options: Unpack[RunOptions],
    ) -> pb.Run:
        """Run it to the end and return the final Run; RunFailedError if it failed or was cancelled.
        ``timeout`` bounds the whole run (the run is cancelled when it expires)."""
        events = self.generate(
            workflow, template=template, params=params, timeout=timeout, wait_for_ready=wait_for_ready, **options
        )
        run_id = ""
        async for event in events:
            run_id = event.run_id
        run = await self.get(run_id)
        if run.status != pb.RUN_STATUS_COMPLETED:
            raise RunFailedError(run)
        return run

    async def submit(
        self,
        workflow: Workflow | None = None,
        *,
        template: str = "",
        params: Mapping[str, Param] | None = None,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
        **options: Unpack[RunOptions],
    ) -> pb.Run:
        """Start a run and return it at once; follow it with ``watch``."""
        request = pb.SubmitRequest(spec=run_spec(workflow, template=template, params=params, **options))
        reply = await self._unary(self._stub.Submit(request, **self._call_options(timeout, wait_for_ready)))
        return reply.run

    async def watch(
        self, run_id: str, after_seq: int = 0, *, timeout: float | None = None, wait_for_ready: bool | None = None
    ) -> AsyncGenerator[pb.RunEvent, None]:
        """A run's events after ``after_seq`` (replayed, then live) until its terminal event."""
        request = pb.WatchRunRequest(run_id=run_id, after_seq=after_seq)
        call = self._stub.WatchRun(request, **self._call_options(timeout, wait_for_ready, stream=True))
        async for reply in self._stream(call):
            yield reply.event

    async def get(self, run_id: str, *, timeout: float | None = None, wait_for_ready: bool | None = None) -> pb.Run:
        call = self._stub.GetRun(pb.GetRunRequest(run_id=run_id), **self._call_options(timeout, wait_for_ready))
        return (await self._unary(call)).run

    async def runs(
        self,
        statuses: Iterable[pb.RunStatus.ValueType] = (),
        page_size: int = 100,
        *,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
    ) -> AsyncGenerator[pb.Run, None]:
        """Every run, newest first (pages are fetched as the loop goes; ``timeout`` is per page)."""
        token = ""
        while True:
            request = pb.ListRunsRequest(page_size=page_size, page_token=token, statuses=list(statuses))
            page = await self._unary(self._stub.ListRuns(request, **self._call_options(timeout, wait_for_ready)))
            for run in page.runs:
                yield run
            if not (token := page.next_page_token):
                return

    async def cancel(
        self, run_id: str, reason: str = "", *, timeout: float | None = None, wait_for_ready: bool | None = None
    ) -> pb.Run:
        """Cancel a run (idempotent) and return it once it has ended."""
        request = pb.CancelRunRequest(run_id=run_id, reason=reason)
        return (await self._unary(self._stub.CancelRun(request, **self._call_options(timeout, wait_for_ready)))).run

    async def templates(self, *, timeout: float | None = None, wait_for_ready: bool | None = None) -> list[pb.Template]:
        call = self._stub.ListTemplates(pb.ListTemplatesRequest(), **self._call_options(timeout, wait_for_ready))
        return list((await self._unary(call)).templates)

    async def backends(self, *, timeout: float | None = None, wait_for_ready: bool | None = None) -> list[pb.Backend]:
        """The backends of the service's pool, and what it knows of each."""
        call = self._stub.ListBackends(pb.ListBackendsRequest(), **self._call_options(timeout, wait_for_ready))
        return list((await self._unary(call)).backends)

    async def describe(
        self, name: str, *, timeout: float | None = None, wait_for_ready: bool | None = None
    ) -> pb.Template:
        request = pb.DescribeTemplateRequest(name=name)
        call = self._stub.DescribeTemplate(request, **self._call_options(timeout, wait_for_ready))
        return (await self._unary(call)).template

    def _call_options(self, timeout: float | None, wait_for_ready: bool | None, stream: bool = False) -> dict[str, Any]:
        return call_options(self._metadata, (self.timeout, self.wait_for_ready), timeout, wait_for_ready, stream)

    @staticmethod
    async def _unary(call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc

    @staticmethod
    async def _stream(call: Any) -> AsyncIterator[Any]:
        try:
            async for reply in call:
                yield reply
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc
        finally:
            call.cancel()  # a no-op once the stream ended; ends the call if the caller stopped early
