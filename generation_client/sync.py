"""The blocking client of the generation service, for Flask, Django, scripts and threads."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import grpc

from generation_client.errors import translate
from generation_client.requests import Param, Workflow, call_metadata, channel_credentials, generate_request
from generation_service.v1 import generation_pb2 as pb
from generation_service.v1 import generation_pb2_grpc as pb_grpc

T = TypeVar("T")


class GenerationClient:
    """The same API as AsyncGenerationClient, blocking. Use as ``with``, or call ``close()``."""

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
        self._channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        self._stub = pb_grpc.GenerationServiceStub(self._channel)
        self._metadata = call_metadata(token)

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
        **options: Any,
    ) -> Iterator[pb.RunEvent]:
        """Run a workflow (or a template with params) and yield its events until the terminal one.
        Closing the iterator early cancels the run unless ``detach=True``."""
        request = generate_request(workflow, template=template, params=params, **options)
        return self._stream(self._stub.Generate(request, metadata=self._metadata))

    def submit(
        self,
        workflow: Workflow | None = None,
        *,
        template: str = "",
        params: Mapping[str, Param] | None = None,
        **options: Any,
    ) -> pb.Run:
        request = generate_request(workflow, template=template, params=params, **options)
        return self._unary(self._stub.Submit, request)

    def watch(self, run_id: str, after_seq: int = 0) -> Iterator[pb.RunEvent]:
        request = pb.WatchRunRequest(run_id=run_id, after_seq=after_seq)
        return self._stream(self._stub.WatchRun(request, metadata=self._metadata))

    def get(self, run_id: str) -> pb.Run:
        return self._unary(self._stub.GetRun, pb.GetRunRequest(run_id=run_id))

    def runs(self, statuses: Iterable[pb.RunStatus.ValueType] = (), page_size: int = 100) -> Iterator[pb.Run]:
        token = ""
        while True:
            request = pb.ListRunsRequest(page_size=page_size, page_token=token, statuses=list(statuses))
            page: pb.ListRunsResponse = self._unary(self._stub.ListRuns, request)
            yield from page.runs
            if not (token := page.next_page_token):
                return

    def cancel(self, run_id: str, reason: str = "") -> pb.Run:
        return self._unary(self._stub.CancelRun, pb.CancelRunRequest(run_id=run_id, reason=reason))

    def templates(self) -> list[pb.Template]:
        reply: pb.ListTemplatesResponse = self._unary(self._stub.ListTemplates, pb.ListTemplatesRequest())
        return list(reply.templates)

    def backends(self) -> list[pb.Backend]:
        """The backends of the service's pool, and what it knows of each."""
        reply: pb.ListBackendsResponse = self._unary(self._stub.ListBackends, pb.ListBackendsRequest())
        return list(reply.backends)

    def describe(self, name: str) -> pb.Template:
        return self._unary(self._stub.DescribeTemplate, pb.DescribeTemplateRequest(name=name))

    def _unary(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise translate(exc) from exc

    @staticmethod
    def _stream(call: Any) -> Iterator[pb.RunEvent]:
        try:
            yield from call
        except grpc.RpcError as exc:
            raise translate(exc) from exc
        finally:
            call.cancel()
