"""The blocking client of the generation service, for Flask, Django, scripts and threads."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar, Unpack

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

T = TypeVar("T")


class GenerationClient:
    """The same API as AsyncGenerationClient, blocking. Use as ``with``, or call ``close()``. One client
    may be shared by threads (a WSGI app's workers).

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
        channel = (
            grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
            if credentials
            else grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        )
        self._use(channel, token, timeout, wait_for_ready)

    @classmethod
    def over_channel(
        cls,
        channel: grpc.Channel,
        *,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        wait_for_ready: bool = False,
    ) -> GenerationClient:
        """A client over a channel the caller made (its own options, interceptors, or grpc_testing's
        channel in unit tests); ``close()`` closes it."""
        client = cls.__new__(cls)
        client._use(channel, token, timeout, wait_for_ready)
        return client

    def _use(self, channel: grpc.Channel, token: str | None, timeout: float | None, wait_for_ready: bool) -> None:
        self._channel = channel
        self._stub = pb_grpc.GenerationServiceStub(channel)
        self._metadata = call_metadata(token)
        self.timeout, self.wait_for_ready = timeout, wait_for_ready

    def __enter__(self) -> GenerationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def generate(
        self,
        workflow: Workflow | None = None,
        *,
        template: str = "",
        params: Mapping[str, Param] | None = None,
        detach: bool = False,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
        **options: Unpack[RunOptions],
    ) -> Iterator[pb.RunEvent]:
        """Run a workflow (or a template with params) and yield its events until the terminal one.
        Leaving the loop early cancels the run unless ``detach=True``."""
        policy = pb.DISCONNECT_POLICY_DETACH if detach else pb.DISCONNECT_POLICY_CANCEL
        request = pb.GenerateRequest(
            spec=run_spec(workflow, template=template, params=params, **options), on_disconnect=policy
        )
        call = self._stub.Generate(request, **self._call_options(timeout, wait_for_ready, stream=True))
        for reply in self._stream(call):
            yield reply.event

    def run(
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
        for event in events:
            run_id = event.run_id
        run = self.get(run_id)
        if run.status != pb.RUN_STATUS_COMPLETED:
            raise RunFailedError(run)
        return run

    def submit(
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
        reply: pb.SubmitResponse = self._unary(self._stub.Submit, request, timeout, wait_for_ready)
        return reply.run

    def watch(
        self, run_id: str, after_seq: int = 0, *, timeout: float | None = None, wait_for_ready: bool | None = None
    ) -> Iterator[pb.RunEvent]:
        """A run's events after ``after_seq`` (replayed, then live) until its terminal event."""
        request = pb.WatchRunRequest(run_id=run_id, after_seq=after_seq)
        call = self._stub.WatchRun(request, **self._call_options(timeout, wait_for_ready, stream=True))
        for reply in self._stream(call):
            yield reply.event

    def get(self, run_id: str, *, timeout: float | None = None, wait_for_ready: bool | None = None) -> pb.Run:
        reply: pb.GetRunResponse = self._unary(
            self._stub.GetRun, pb.GetRunRequest(run_id=run_id), timeout, wait_for_ready
        )
        return reply.run

    def runs(
        self,
        statuses: Iterable[pb.RunStatus.ValueType] = (),
        page_size: int = 100,
        *,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
    ) -> Iterator[pb.Run]:
        """Every run, newest first (pages are fetched as the loop goes; ``timeout`` is per page)."""
        token = ""
        while True:
            request = pb.ListRunsRequest(page_size=page_size, page_token=token, statuses=list(statuses))
            page: pb.ListRunsResponse = self._unary(self._stub.ListRuns, request, timeout, wait_for_ready)
            yield from page.runs
            if not (token := page.next_page_token):
                return

    def cancel(
        self, run_id: str, reason: str = "", *, timeout: float | None = None, wait_for_ready: bool | None = None
    ) -> pb.Run:
        """Cancel a run (idempotent) and return it once it has ended."""
        request = pb.CancelRunRequest(run_id=run_id, reason=reason)
        reply: pb.CancelRunResponse = self._unary(self._stub.CancelRun, request, timeout, wait_for_ready)
        return reply.run

    def templates(self, *, timeout: float | None = None, wait_for_ready: bool | None = None) -> list[pb.Template]:
        request = pb.ListTemplatesRequest()
        reply: pb.ListTemplatesResponse = self._unary(self._stub.ListTemplates, request, timeout, wait_for_ready)
        return list(reply.templates)

    def backends(self, *, timeout: float | None = None, wait_for_ready: bool | None = None) -> list[pb.Backend]:
        """The backends of the service's pool, and what it knows of each."""
        request = pb.ListBackendsRequest()
        reply: pb.ListBackendsResponse = self._unary(self._stub.ListBackends, request, timeout, wait_for_ready)
        return list(reply.backends)

    def describe(self, name: str, *, timeout: float | None = None, wait_for_ready: bool | None = None) -> pb.Template:
        request = pb.DescribeTemplateRequest(name=name)
        reply: pb.DescribeTemplateResponse = self._unary(self._stub.DescribeTemplate, request, timeout, wait_for_ready)
        return reply.template

    def _call_options(self, timeout: float | None, wait_for_ready: bool | None, stream: bool = False) -> dict[str, Any]:
        return call_options(self._metadata, (self.timeout, self.wait_for_ready), timeout, wait_for_ready, stream)

    def _unary(self, method: Callable[..., T], request: Any, timeout: float | None, wait: bool | None) -> T:
        try:
            return method(request, **self._call_options(timeout, wait))
        except grpc.RpcError as exc:
            raise translate(exc) from exc

    @staticmethod
    def _stream(call: Any) -> Iterator[Any]:
        try:
            yield from call
        except grpc.RpcError as exc:
            raise translate(exc) from exc
        finally:
            call.cancel()  # a no-op once the stream ended; ends the call if the caller stopped early
