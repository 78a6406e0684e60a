"""Bearer-token authentication of gRPC calls (health and reflection stay open for probes)."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Calls must carry ``authorization: Bearer <token>`` with one of the configured tokens;
    otherwise they end with UNAUTHENTICATED before reaching the servicer."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    def _allowed(self, metadata: Any) -> bool:
        header = next((value for key, value in metadata or () if key == "authorization"), "")
        scheme, _, token = str(header).partition(" ")
        # Compare against every token, so timing tells nothing about which one nearly matched.
        matches = [hmac.compare_digest(token.encode(), t) for t in self._tokens]
        return scheme.lower() == "bearer" and any(matches)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if details.method.startswith(OPEN_PREFIXES) or handler is None or self._allowed(details.invocation_metadata):
            return handler
        return _refusing(handler)


_MESSAGE = "this service needs 'authorization: Bearer <token>' call metadata with a valid token"


def _refusing(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape that aborts with UNAUTHENTICATED."""

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)

    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)
        yield  # pragma: no cover - abort raises

    codec = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **codec)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **codec)
    raise RuntimeError("client-streaming methods are not part of this service")
