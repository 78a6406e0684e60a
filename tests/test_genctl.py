"""genctl against the real service: every command, JSON lines for scripts, exit codes, human progress."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np

from comfy_simulator.media import png_bytes
from comfygen.v1 import generation_pb2 as pb
from genctl.__main__ import target
from stack_helpers import EXAMPLE_WORKFLOWS, REPO, SIM_WORKFLOWS, Stack, StackFactory

UNKNOWN_RUN = "00000000-0000-4000-8000-000000000000"


def quick_image() -> dict[str, Any]:
    graph = json.loads((SIM_WORKFLOWS / "image.json").read_text())
    graph["1"]["inputs"].update(width=32, height=32)
    graph["2"]["inputs"].update(steps=3, seconds=0.1)
    return graph


async def genctl(stack: Stack, *args: str, columns: int | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "COLUMNS": str(columns)} if columns else None  # rich's width when not on a terminal
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genctl",
        *args,
        "--server",
        f"127.0.0.1:{stack.service.port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_json_mode_prints_one_object_per_event_and_exits_0(stack: Stack) -> None:
    code, out, err = await genctl(stack, "generate", str(EXAMPLE_WORKFLOWS / "audio.json"), "--json")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["run_id"] for e in events} == {events[0]["run_id"]}
    assert events[0]["type"] == "accepted" and events[-1]["type"] == "completed"
    outputs = [e for e in events if e["type"] == "output_ready"]
    assert [(o["media_type"], o["mime"]) for o in outputs] == [("audio", "audio/mpeg"), ("audio", "audio/flac")]
    for output in outputs:
        assert output["url"].startswith(stack.gateway.base_url)
        assert len(output["sha256"]) == 64 and int(output["size_bytes"]) > 0
    assert [o["media_type"] for o in events[-1]["outputs"]] == ["audio", "audio"]


async def test_human_mode_shows_progress_and_prints_the_urls(stack: Stack) -> None:
    code, out, err = await genctl(stack, "generate", str(SIM_WORKFLOWS / "image.json"))
    assert code == 0, err
    assert "node 2 Sampler" in err and "100%" in err and "completed in" in err
    (url,) = out.split()
    assert url.startswith(f"{stack.gateway.base_url}/api/media/image/")


async def test_failed_run_exits_1_and_invalid_workflow_exits_2(stack: Stack, tmp_path: Path) -> None:
    failing = tmp_path / "failing.json"
    failing.write_text(
        json.dumps(
            {
                "1": {"class_type": "LoadAudio", "inputs": {"audio": "missing.wav"}},
                "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": "x"}},
            }
        )
    )
    code, _, err = await genctl(stack, "generate", str(failing))
    assert code == 3 and "INVALID_ARGUMENT" in err and "node 1 (LoadAudio)" in err

    (stack.sim.settings.data_dir / "input" / "broken.wav").write_bytes(b"not audio")
    failing.write_text(
        json.dumps(
            {
                "1": {"class_type": "LoadAudio", "inputs": {"audio": "broken.wav"}},
                "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": "x"}},
            }
        )
    )
    code, out, err = await genctl(stack, "generate", str(failing), "--json")
    assert code == 1, err
    last = json.loads(out.splitlines()[-1])
    assert (last["type"], last["code"], last["node_id"]) == ("failed", "execution_error", "1")

    code, _, err = await genctl(stack, "generate", str(tmp_path / "nowhere.json"))
    assert code == 2 and "cannot read" in err


async def test_genctl_templates_describe_and_generate_from_a_template(stack: Stack, tmp_path: Path) -> None:
    code, out, _ = await genctl(stack, "templates")
    assert code == 0 and "ace_step_instrumental" in out and "audio" in out
    code, out, _ = await genctl(stack, "describe", "ace_step_instrumental", "--json")
    assert code == 0 and {p["name"] for p in json.loads(out)["parameters"]} >= {"tags", "seconds", "seed"}
    picture = tmp_path / "in.png"
    picture.write_bytes(png_bytes(np.full((16, 16, 3), 90, np.uint8)))
    code, out, err = await genctl(
        stack,
        "generate",
        "--template",
        "sd35_image_to_image",
        "--param",
        "prompt=a 'cat'",
        "--param",
        "steps=2",
        "--input",
        f"image={picture}",
        "--json",
    )
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["template"] == "sd35_image_to_image" and events[-1]["type"] == "completed"
    code, _, err = await genctl(stack, "generate", "--template", "ace_step_instrumental", "--param", "seconds=9999")
    assert code == 3 and "params.seconds" in err


async def test_genctl_submit_watch_get_list_cancel(stack: Stack, tmp_path: Path) -> None:
    workflow = tmp_path / "quick.json"
    workflow.write_text(json.dumps(quick_image()))
    code, out, err = await genctl(stack, "submit", str(workflow), "--json")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    code, out, _ = await genctl(stack, "watch", run_id, "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["type"] == "completed"
    code, out, _ = await genctl(stack, "get", run_id, "--json")
    assert code == 0 and json.loads(out)["status"] == "completed"
    code, out, _ = await genctl(stack, "list", "--status", "completed", "--json")
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == [run_id]
    code, out, _ = await genctl(stack, "cancel", run_id, "--json")
    assert code == 0 and json.loads(out)["status"] == "completed"  # finished runs stay as they are
    code, _, err = await genctl(stack, "get", UNKNOWN_RUN)
    assert code == 4 and "NOT_FOUND" in err


async def test_genctl_backends_shows_each_backend(stack: Stack) -> None:
    code, out, _ = await genctl(stack, "backends")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:5] == ["NAME", "STATE", "QUEUE", "HERE", "NODES"]
    name, state, queue, here, nodes, url = row.split()
    assert (name, state, url) == (stack.sim.comfy_url, "up", stack.sim.comfy_url) and int(nodes) > 10
    code, out, _ = await genctl(stack, "backends", "--json")
    (backend,) = json.loads(out)
    assert backend["name"] == stack.sim.comfy_url and backend["up"] is True


def test_a_server_without_port_gets_the_default_port() -> None:
    assert target("127.0.0.1") == "127.0.0.1:50051" and target("genservice") == "genservice:50051"
    assert target("[::1]") == "[::1]:50051" and target("[::1]:7000") == "[::1]:7000"
    assert target("dns:///genservice:50051") == "dns:///genservice:50051"


async def test_an_unreachable_backend_is_one_readable_line_and_exit_5(stack_factory: StackFactory) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        stack = await stack_factory(backend_url=f"http://127.0.0.1:{unused.getsockname()[1]}")
        code, _, err = await genctl(stack, "generate", "--template", "solid_image")
    assert code == 5 and err.startswith("genctl: UNAVAILABLE: ") and len(err.strip().splitlines()) == 1, err
    assert "ConnectionKey" not in err and "Error(" not in err


async def test_ctrl_c_says_the_run_was_cancelled(stack: Stack, tmp_path: Path) -> None:
    graph = quick_image()
    graph["2"]["inputs"].update(steps=500, seconds=60)
    workflow = tmp_path / "long.json"
    workflow.write_text(json.dumps(graph))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genctl",
        "generate",
        str(workflow),
        "--json",
        "--server",
        f"127.0.0.1:{stack.service.port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    while json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))["type"] != "node_progress":
        pass
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    (run_id,) = re.findall(r"run (\S+) cancelled", err.decode())
    run = await stack.stub.GetRun(pb.GetRunRequest(run_id=run_id))
    assert run.run.status == pb.RUN_STATUS_CANCELLED


def test_progress_line_shows_overall_percentage_and_eta() -> None:
    from genctl.output import running_text

    progress = pb.NodeProgress(node_id="2", value=10, max=50, overall=0.42)
    assert running_text(progress.overall, progress) == "running 42%"  # no estimate: no ETA
    progress.estimate.remaining.FromSeconds(12)
    assert running_text(progress.overall, progress) == "running 42% · ETA 12s"


async def test_list_get_and_describe_print_tables_for_people(stack: Stack, tmp_path: Path) -> None:
    run = await stack.stub.Submit(pb.SubmitRequest(spec=pb.RunSpec(workflow_json=json.dumps(quick_image()))))
    run_id = run.run.run_id
    events = [r.event async for r in stack.stub.WatchRun(pb.WatchRunRequest(run_id=run_id))]
    assert events[-1].HasField("completed")

    code, out, _ = await genctl(stack, "list", columns=200)
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["RUN", "STATUS", "CREATED", "WORKFLOW", "/", "TEMPLATE", "OUTPUTS"]
    (row,) = rows
    assert row.split()[:2] == [run_id, "completed"] and row.split()[-1] == "1"

    code, out, _ = await genctl(stack, "get", run_id, columns=200)
    fields = {k: v.strip() for k, v in (line.split(None, 1) for line in out.splitlines()[1:]) if v.strip()}
    assert code == 0 and out.split()[:2] == ["FIELD", "VALUE"]
    assert fields["run_id"] == run_id and fields["status"] == "completed"
    assert fields["backend"] == stack.sim.comfy_url
    (output,) = [line.split() for line in out.splitlines() if line.startswith("output ")]
    assert (
        output[:3] == ["output", "image", "0"] and output[3] == f"{stack.gateway.base_url}/api/media/image/{run_id}/0"
    )

    code, out, _ = await genctl(stack, "describe", "ace_step_instrumental", columns=200)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["PARAMETER", "TYPE", "DEFAULT", "BOUNDS", "DESCRIPTION"]
    seconds = next(line for line in lines if line.startswith("seconds "))
    assert seconds.split()[1:4] == ["float", "30.0", "1..240"]
    seed = next(line for line in lines if line.startswith("seed "))
    assert seed.split()[1:3] == ["seed", '"random"']
