"""Operating the service: health that follows the backend, metrics of a real run, bearer tokens,
TLS and mutual TLS, signed output URLs, structured lifecycle logs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from comfy_generation.logformat import JsonFormatter, TextFormatter
from comfy_generation.runstore import signature_problem
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from stack_helpers import SIM_WORKFLOWS, Stack, StackFactory, scrape

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def image_request(**fields: Any) -> pb.RunSpec:
    graph = json.loads((SIM_WORKFLOWS / "image.json").read_text())
    graph["2"]["inputs"].update(steps=2, seconds=0.1)
    return pb.RunSpec(workflow_json=json.dumps(graph), **fields)


async def test_health_follows_the_backend(stack_factory: StackFactory) -> None:
    stack = await stack_factory(health_check_seconds=0.1)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.service.port}")
    health: Any = health_pb2_grpc.HealthStub(channel)  # the published stubs omit the stub's methods
    seen = []
    async for reply in health.Watch(health_pb2.HealthCheckRequest(service="comfygen.v1.GenerationService")):
        seen.append(reply.status)
        if reply.status == SERVING and len(seen) == 1:
            stack.sim.faults.refuse_connections = True
        elif reply.status == NOT_SERVING:
            stack.sim.faults.refuse_connections = False
        elif reply.status == SERVING:
            break
    assert seen == [SERVING, NOT_SERVING, SERVING]
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING
    await channel.close()


async def test_metrics_count_a_real_run(stack_factory: StackFactory) -> None:
    stack = await stack_factory(metrics_listen="127.0.0.1:0")
    events = [reply.event async for reply in stack.stub.Generate(pb.GenerateRequest(spec=image_request()))]
    assert events[-1].HasField("completed")
    size = events[-1].completed.outputs[0].size_bytes
    samples = await scrape(stack)
    assert samples['generation_runs_total{outcome="completed",template=""}'] == 1
    assert samples["generation_output_bytes_downloaded_total"] == size
    assert samples["generation_execution_seconds_count"] == 1
    assert samples["generation_queue_wait_seconds_count"] == 1
    assert samples['generation_active_streams{rpc="Generate"}'] == 0
    assert samples["generation_runs_in_flight"] == 0
    backend = f'{{backend="{stack.sim.comfy_url}"}}'
    assert samples[f"generation_backend_up{backend}"] == 1
    assert samples[f"generation_backend_dispatched_runs_total{backend}"] == 1
    assert samples["generation_backend_socket_reconnects_total"] == 0
    stack.sim.faults.drop_socket_after_frames = 0  # the next frame closes the socket: the service reconnects
    assert [reply.event async for reply in stack.stub.Generate(pb.GenerateRequest(spec=image_request()))][-1].HasField(
        "completed"
    )
    stack.sim.faults.reset()
    assert await next(iter(stack.service.runner.pool.members.values())).client.wait_connected(10)
    assert (await scrape(stack))["generation_backend_socket_reconnects_total"] >= 1


async def test_bearer_tokens_are_required_except_for_health(stack_factory: StackFactory) -> None:
    stack = await stack_factory(auth_tokens="s3cret,other-token")
    unknown = pb.GetRunRequest(run_id="00000000-0000-4000-8000-000000000000")
    for metadata in [None, (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.GetRun(unknown, metadata=metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in str(info.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.Generate(pb.GenerateRequest(spec=image_request()), metadata=metadata).read()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.GetRun(unknown, metadata=(("authorization", "Bearer other-token"),))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # authenticated: the call reached the service
    events = [
        reply.event
        async for reply in stack.stub.Generate(
            pb.GenerateRequest(spec=image_request()), metadata=(("authorization", "Bearer s3cret"),)
        )
    ]
    assert events[-1].HasField("completed")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.service.port}") as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING


def write_pem(path: Path, blob: trustme.Blob) -> str:
    blob.write_to_path(str(path))
    return str(path)


async def test_tls_and_mutual_tls(stack_factory: StackFactory, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client@example.test")
    cert = write_pem(tmp_path / "server.pem", server_cert.private_key_and_cert_chain_pem)
    stack = await stack_factory(
        tls_cert_file=cert, tls_key_file=cert, tls_client_ca_file=write_pem(tmp_path / "ca.pem", ca.cert_pem)
    )
    target = f"127.0.0.1:{stack.service.port}"
    root = ca.cert_pem.bytes()
    unknown = pb.GetRunRequest(run_id="00000000-0000-4000-8000-000000000000")

    async def call(credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
        channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
        try:
            await pb_grpc.GenerationServiceStub(channel).GetRun(unknown, timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        finally:
            await channel.close()
        return grpc.StatusCode.OK

    with_client_cert = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=client_cert.private_key_pem.bytes(),
        certificate_chain=client_cert.cert_chain_pems[0].bytes(),
    )
    assert await call(with_client_cert) == grpc.StatusCode.NOT_FOUND  # TLS and client cert accepted
    assert await call(grpc.ssl_channel_credentials(root_certificates=root)) == grpc.StatusCode.UNAVAILABLE
    assert await call(None) == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
    other_ca = trustme.CA().cert_pem.bytes()
    assert await call(grpc.ssl_channel_credentials(root_certificates=other_ca)) == grpc.StatusCode.UNAVAILABLE


async def test_output_urls_are_signed_when_a_secret_is_set(stack_factory: StackFactory) -> None:
    stack = await stack_factory(media_signing_secret="shared-secret", media_url_ttl_seconds=600)
    events = [reply.event async for reply in stack.stub.Generate(pb.GenerateRequest(spec=image_request()))]
    url = httpx.URL(events[-1].completed.outputs[0].url)
    expires, sig = url.params["expires"], url.params["sig"]
    assert signature_problem(url.path, expires, sig, "shared-secret", time.time()) is None
    assert int(expires) == pytest.approx(time.time() + 600, abs=30)
    assert signature_problem(url.path, expires, sig, "another-secret", time.time()) is not None
    assert signature_problem(url.path, expires, sig, "shared-secret", time.time() + 700) == "this URL has expired"
    run = (await stack.stub.GetRun(pb.GetRunRequest(run_id=events[0].run_id))).run
    assert "sig=" in run.outputs[0].url  # GetRun signs afresh


async def test_every_lifecycle_step_logs_its_run(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        events = [reply.event async for reply in stack.stub.Generate(pb.GenerateRequest(spec=image_request()))]
    run_id = events[0].run_id
    lines = [r for r in caplog.records if getattr(r, "run_id", None) == run_id]
    messages = [r.getMessage() for r in lines]
    assert any("accepted as prompt" in m for m in messages)
    assert any("stored 02_output_image.png" in m for m in messages)
    assert any(m.endswith("completed") for m in messages)
    assert all(getattr(r, "prompt_id", "") == events[0].accepted.prompt_id for r in lines)
    entry = json.loads(JsonFormatter().format(lines[0]))
    assert entry["run_id"] == run_id and entry["prompt_id"] == events[0].accepted.prompt_id
    assert entry["level"] == "INFO" and "time" in entry and "message" in entry
    assert f"run_id={run_id}" in TextFormatter().format(lines[0])
