"""Server reflection answers on both protocol versions: grpc.reflection.v1 (current grpcurl, Postman)
and v1alpha (older tools)."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2 as messages

from stack_helpers import Stack


async def test_reflection_v1_and_v1alpha_list_the_service(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.service.port}") as channel:
        for version in ("v1", "v1alpha"):
            call = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=messages.ServerReflectionRequest.SerializeToString,
                response_deserializer=messages.ServerReflectionResponse.FromString,
            )
            replies = [r async for r in call(iter([messages.ServerReflectionRequest(list_services="")]))]
            names = {s.name for s in replies[0].list_services_response.service}
            assert {"comfygen.v1.GenerationService", "grpc.reflection.v1.ServerReflection"} <= names, version
            symbol = messages.ServerReflectionRequest(file_containing_symbol="comfygen.v1.GenerationService")
            (found,) = [r async for r in call(iter([symbol]))]
            assert found.file_descriptor_response.file_descriptor_proto, version
