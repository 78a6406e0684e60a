"""Templates through the gRPC API: listing, describing, parameter errors, folder changes, start-up checks."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from comfy_simulator import Simulator
from comfygen.v1 import generation_pb2 as pb
from comfygen.v1 import generation_pb2_grpc as pb_grpc
from generation_service.server import running_service
from generation_service.settings import SHIPPED_TEMPLATES_DIR
from stack_helpers import Stack, StackFactory, service_settings

SHIPPED = {
    "ace_step_instrumental",
    "blur_image",
    "sd35_image_to_image",
    "sd35_text_to_image",
    "silent_audio",
    "solid_image",
    "solid_video",
    "wan22_5b_text_to_video",
}


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    bad = error_details_pb2.BadRequest()
    assert status_pb2.Status.FromString(details).details[0].Unpack(bad)
    return {v.field: v.description for v in bad.field_violations}


async def test_list_and_describe_templates(stack: Stack) -> None:
    listed = await stack.stub.ListTemplates(pb.ListTemplatesRequest())
    assert {t.name for t in listed.templates} == SHIPPED
    ace = (await stack.stub.DescribeTemplate(pb.DescribeTemplateRequest(name="ace_step_instrumental"))).template
    assert ace.media == pb.MEDIA_TYPE_AUDIO and ace.description
    params = {p.name: p for p in ace.parameters}
    seconds = params["seconds"]
    assert (seconds.type, seconds.required, seconds.min, seconds.max) == (pb.PARAMETER_TYPE_FLOAT, False, 1.0, 240.0)
    assert seconds.default_value.number == 30.0
    assert params["seed"].type == pb.PARAMETER_TYPE_SEED and params["seed"].default_value.text == "random"
    sd = (await stack.stub.DescribeTemplate(pb.DescribeTemplateRequest(name="sd35_text_to_image"))).template
    assert {p.name for p in sd.parameters if p.required} == {"prompt"}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.DescribeTemplate(pb.DescribeTemplateRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "ace_step_instrumental" in str(info.value.details())


async def test_every_parameter_problem_is_reported_at_once(stack: Stack) -> None:
    request = pb.RunSpec(
        template="sd35_text_to_image",
        params={
            "width": pb.ParamValue(text="wide"),
            "steps": pb.ParamValue(integer=100000),
            "colour": pb.ParamValue(text="red"),
        },
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.Generate(pb.GenerateRequest(spec=request)).read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = violations(info.value)
    assert set(fields) == {"params.width", "params.steps", "params.colour", "params.prompt"}
    assert "wide" in fields["params.width"] and "maximum" in fields["params.steps"]
    assert list(stack.runs_dir.iterdir()) == []  # nothing was recorded or submitted

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(template="no_such_template")))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown template" in str(info.value.details())

    raw = json.dumps({"1": {"class_type": "EmptyImage", "inputs": {}}})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.Submit(
            pb.SubmitRequest(spec=pb.RunSpec(workflow_json=raw, params={"x": pb.ParamValue(text="1")}))
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "go with a template" in str(info.value.details())


async def test_media_over_the_limit_is_refused(stack_factory: StackFactory) -> None:
    stack = await stack_factory(max_input_media_bytes=1024)
    request = pb.RunSpec(template="blur_image", params={"image": pb.ParamValue(data=b"\x89PNG" + b"0" * 4096)})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.Generate(pb.GenerateRequest(spec=request)).read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "params.image" in violations(info.value)


async def test_templates_dropped_into_the_folder_are_served_without_restart(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    stack = await stack_factory(templates_dir=str(folder))
    assert list((await stack.stub.ListTemplates(pb.ListTemplatesRequest())).templates) == []
    for name in ("solid_image.template.json", "solid_image.workflow.json"):
        shutil.copy(SHIPPED_TEMPLATES_DIR / name, folder / name)
    assert [t.name for t in (await stack.stub.ListTemplates(pb.ListTemplatesRequest())).templates] == ["solid_image"]
    events = [
        reply.event async for reply in stack.stub.Generate(pb.GenerateRequest(spec=pb.RunSpec(template="solid_image")))
    ]
    assert events[-1].HasField("completed")


async def test_a_broken_template_stops_start_up_naming_file_and_problem(tmp_path: Path, simulator) -> None:
    folder = tmp_path / "templates"
    shutil.copytree(SHIPPED_TEMPLATES_DIR, folder)
    manifest = json.loads((folder / "sd35_text_to_image.template.json").read_text())
    manifest["parameters"]["prompt"]["targets"] = [{"node": "999", "input": "text"}]
    (folder / "sd35_text_to_image.template.json").write_text(json.dumps(manifest))
    settings = service_settings(
        tmp_path, "http://127.0.0.1:1", backend_url=simulator.comfy_url, templates_dir=str(folder)
    )
    with pytest.raises(RuntimeError) as info:
        async with running_service(settings):
            pass
    assert "sd35_text_to_image.template.json" in str(info.value) and "999" in str(info.value)


LISTENING = re.compile(r"generation service listening on [\d.]+:(\d+)")


async def test_the_service_started_outside_a_checkout_serves_the_shipped_templates(
    tmp_path: Path, simulator: Simulator
) -> None:
    """``python -m generation_service`` with the default templates_dir, in an empty working directory: the
    templates come from the installed package, not from a folder next to where it was started."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GENERATION_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "generation_service",
        "--backend-url",
        simulator.comfy_url,
        "--runs-dir",
        str(tmp_path / "runs"),
        "--listen",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=elsewhere,
        env=environment,
    )
    assert proc.stderr is not None
    log: list[str] = []
    try:
        port = await asyncio.wait_for(_listening_port(proc.stderr, log), 30)
        assert port, "the service exited before it listened:\n" + "".join(log)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            listed = await pb_grpc.GenerationServiceStub(channel).ListTemplates(pb.ListTemplatesRequest())
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.communicate()  # reads what is left of its log, then waits for the exit
    in_package = {p.name.removesuffix(".template.json") for p in SHIPPED_TEMPLATES_DIR.glob("*.template.json")}
    assert {t.name for t in listed.templates} == in_package == SHIPPED
    assert list(elsewhere.iterdir()) == []  # nothing was looked for or written relative to it


async def _listening_port(stream: asyncio.StreamReader, log: list[str]) -> int:
    """The port the service logs once it listens, or 0 when its log ends first; every line goes to ``log``."""
    while line := await stream.readline():
        log.append(line.decode())
        if match := LISTENING.search(log[-1]):
            return int(match.group(1))
    return 0
