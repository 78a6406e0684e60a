"""`workflows/` holds example workflows for a real ComfyUI; the simulator's own fixtures (with its
`SimulatedSampler`) live in `comfy_simulator/workflows/`."""

from __future__ import annotations

import json
import re

import pytest

from comfygen.v1 import generation_pb2 as pb
from stack_helpers import EXAMPLE_WORKFLOWS, REPO, SIM_WORKFLOWS, Stack

TRANSCRIPTS = REPO / "tests" / "data" / "comfyui-transcripts"
# EmptyAudio (comfy_extras/nodes_audio.py) is not in the recordings; the shipped silent_audio template,
# made for any ComfyUI, uses it too.
CORE_NODES_NOT_RECORDED = {"EmptyAudio"}


def recorded_classes() -> set[str]:
    """Every class_type a real ComfyUI ran in the recorded transcripts."""
    found: set[str] = set()
    for transcript in TRANSCRIPTS.glob("*.json"):
        found.update(re.findall(r'"class_type": ?"(\w+)"', transcript.read_text()))
    return found - {"NoSuchNode"}  # the recording of an unknown node's error


EXAMPLES = sorted(p.name for p in EXAMPLE_WORKFLOWS.glob("*.json"))


def test_example_workflows_use_only_nodes_of_a_real_comfyui() -> None:
    assert EXAMPLES == ["audio.json", "image.json", "video.json"]
    real = recorded_classes() | CORE_NODES_NOT_RECORDED
    for name in EXAMPLES:
        classes = {node["class_type"] for node in json.loads((EXAMPLE_WORKFLOWS / name).read_text()).values()}
        assert classes <= real, (name, classes - real)
    fixtures = {node["class_type"] for p in SIM_WORKFLOWS.glob("*.json") for node in json.loads(p.read_text()).values()}
    assert "SimulatedSampler" in fixtures and "SimulatedSampler" not in real


@pytest.mark.parametrize("name", EXAMPLES)
async def test_each_example_workflow_runs_to_its_output(stack: Stack, name: str) -> None:
    spec = pb.RunSpec(workflow_json=(EXAMPLE_WORKFLOWS / name).read_text(), workflow_name=name)
    events = [reply.event async for reply in stack.stub.Generate(pb.GenerateRequest(spec=spec))]
    assert events[-1].HasField("completed"), events[-1]
    kind = name.removesuffix(".json")
    outputs = events[-1].completed.outputs
    assert outputs and {pb.MediaType.Name(o.media_type) for o in outputs} == {f"MEDIA_TYPE_{kind.upper()}"}
    for output in outputs:
        response = await stack.http.get(output.url)
        assert response.status_code == 200 and response.headers["content-type"] == output.mime
