"""`make demo-cluster` as an operator runs it: Redis, three replicas, two simulated backends; the run's
owner is killed mid-run, another replica takes it over, and the output is fetched back."""

from __future__ import annotations

import asyncio
import json
import re
import sys

from stack_helpers import REPO


async def test_the_cluster_demo_survives_its_owner_being_killed() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "scripts" / "demo_cluster.py"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    log = err.decode()
    assert proc.returncode == 0, log[-3000:]
    assert json.loads(out.decode().strip().splitlines()[-1])["result"] == "ok"
    assert "replica-1 killed (SIGKILL) mid-run" in log
    taken = re.search(r"== (replica-[23]) took the run over after ([\d.]+) s", log)
    assert taken is not None, log[-3000:]
    assert "replica-3 reports the run completed, 1 output(s)" in log
