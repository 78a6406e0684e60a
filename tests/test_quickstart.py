"""The README's quick start, run as written (on free ports), and its SwarmUI section's model table."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import av
import httpx

from stack_helpers import REPO

README = (REPO / "README.md").read_text()


def quick_start() -> list[str]:
    section = README.split("## Quick start\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return block.strip().splitlines()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_quick_start_ends_with_an_output_url_that_plays(tmp_path: Path) -> None:
    lines = quick_start()
    assert lines[0] == "make install && . .venv/bin/activate"
    assert [line.split()[:3] for line in lines[1:4]] == [
        ["python", "-m", "comfy_simulator"],
        ["python", "-m", "generation_service"],
        ["python", "-m", "media_gateway"],
    ]
    assert all(line.endswith(" &") for line in lines[1:4]) and lines[-1].startswith("genctl ")
    ports = {"8188": free_port(), "50051": free_port(), "8080": free_port()}
    script = "\n".join(lines)
    for port, free in ports.items():
        script = script.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free}")
    script = script.replace("exports/json", str(tmp_path / "runs")).replace("/tmp/comfy", str(tmp_path / "comfy"))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["GENCTL_SERVER"] = f"127.0.0.1:{ports['50051']}"  # the README's genctl uses the default address
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        shell = subprocess.Popen(
            ["bash", "-e", "-c", script], cwd=REPO, env=env, stdout=stdout, stderr=stderr, start_new_session=True
        )
        try:
            assert shell.wait(timeout=300) == 0, err.read_text()[-3000:]
            urls = [line for line in out.read_text().splitlines() if line.startswith("http")]  # after make's lines
            assert urls and all(u.startswith(f"http://127.0.0.1:{ports['8080']}/api/media/audio/") for u in urls)
            played = httpx.get(urls[0], timeout=30)
        finally:
            os.killpg(shell.pid, signal.SIGTERM)  # the three background processes: the shell's group
    assert played.status_code == 200 and played.headers["content-type"] == "audio/mpeg"
    with av.open(io.BytesIO(played.content), mode="r") as container:
        frames = sum(int(frame.samples) for frame in container.decode(audio=0))
    assert abs(frames / 44100 - 3.0) < 0.1  # workflows/audio.json: three seconds


def test_the_swarmui_section_names_every_model_file_of_the_shipped_templates() -> None:
    section = README.split("### Connect your SwarmUI\n", 1)[1].split("\n### ", 1)[0]
    models: set[str] = set()
    for workflow in (REPO / "generation_service" / "templates").glob("*.workflow.json"):
        for node in json.loads(workflow.read_text()).values():
            models.update(v for v in node["inputs"].values() if isinstance(v, str) and v.endswith(".safetensors"))
    assert models and all(f"`{name}`" in section for name in models), models
