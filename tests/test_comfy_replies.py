"""The backend client's reading of real ComfyUI answers, held against the recorded transcripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generation_service.comfy_replies import FileRef, node_problems, parse_history_entry, rejection_error
from generation_service.errors import BackendUnavailable, WorkflowRejected

TRANSCRIPTS = Path(__file__).parent / "data" / "comfyui-transcripts"


def recorded(name: str) -> dict:
    return json.loads((TRANSCRIPTS / name).read_text())


def prompt_replies(status: int) -> dict[str, dict]:
    steps = recorded("d_node_errors.json")["steps"]
    return {
        label: step["post_prompt"]["response"]["body"]
        for label, step in steps.items()
        if "post_prompt" in step and step["post_prompt"]["response"]["status"] == status
    }


def rejected_bodies() -> dict[str, dict]:
    return prompt_replies(400)


@pytest.mark.parametrize(("label", "body"), sorted(rejected_bodies().items()))
def test_every_recorded_validation_error_names_its_node(label: str, body: dict) -> None:
    error = rejection_error(json.dumps(body))
    assert isinstance(error, WorkflowRejected)
    assert error.problems, label
    for problem in error.problems:
        assert problem.type and problem.message
    recorded_nodes = set(body.get("node_errors") or {})
    if recorded_nodes:
        assert {p.node_id for p in error.problems} == recorded_nodes
        for problem in error.problems:
            assert problem.class_type == body["node_errors"][problem.node_id]["class_type"]


def test_value_below_min_names_node_input_and_reason() -> None:
    error = rejection_error(json.dumps(rejected_bodies()["value_below_min"]))
    assert isinstance(error, WorkflowRejected)
    assert "node 1 (EmptyImage) input 'width': Value -5 smaller than min of 1 [value_smaller_than_min]" in str(error)


@pytest.mark.parametrize(("label", "body"), sorted(prompt_replies(200).items()))
def test_recorded_200_with_node_errors_names_the_dropped_outputs(label: str, body: dict) -> None:
    problems = node_problems(body["node_errors"])
    assert problems, label
    assert {p.node_id for p in problems} == set(body["node_errors"])


def test_swarm_error_string_and_html_mean_backend_unavailable() -> None:
    assert isinstance(
        rejection_error('{"error": "[SwarmUI] No functional comfy backend available."}'), BackendUnavailable
    )
    assert isinstance(rejection_error("<html>No ComfyUI backend available, loading failed.</html>"), BackendUnavailable)


@pytest.mark.parametrize("transcript", ["a_image.json", "b_audio.json", "c_video.json", "a2_image_cached.json"])
def test_recorded_histories_yield_every_output_file(transcript: str) -> None:
    data = recorded(transcript)
    run = data["steps"]["run"]
    ((prompt_id, entry),) = run["history"]["response"]["body"].items()
    history = parse_history_entry(entry)
    assert history.succeeded
    expected = {
        FileRef(item["filename"], item["subfolder"], item["type"])
        for ui in entry["outputs"].values()
        for value in ui.values()
        if isinstance(value, list)
        for item in value
        if isinstance(item, dict)
    }
    assert {f for o in history.outputs for f in o.files} == expected
    assert history.message("execution_start") is not None


def test_recorded_error_history_is_not_success() -> None:
    run = recorded("e_exec_error.json")["steps"]["run"]
    (entry,) = run["history"]["response"]["body"].values()
    history = parse_history_entry(entry)
    assert not history.succeeded
    error = history.message("execution_error")
    assert error is not None and error["exception_type"] == "av.error.InvalidDataError"
