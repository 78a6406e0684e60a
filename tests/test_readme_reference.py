"""The README's reference sections say what the code does: the run-storage schema names every field and
event type of the typed classes (and its examples are records the readers accept exactly as written), the
settings and simulator tables name every flag, the failure table every failure code."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

import comfy_generation.runstore.layout as layout
from comfy_generation.runstore import (
    MAX_RECORD_BYTES,
    CurrentState,
    Entity,
    MediaKind,
    OutputMeta,
    RunOptions,
    RunRecord,
    RunStatus,
    Timings,
    WorkflowMeta,
)
from comfy_generation.runstore.events import _TYPE_NAMES, FailureCode, NodeProblem, RunEvent, StoredOutput
from comfy_simulator.__main__ import parse_args as simulator_args
from comfygen.v1 import generation_pb2 as pb
from generation_service.settings import Settings
from stack_helpers import REPO

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    """The README's text under the heading ``title`` up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", README, flags=re.MULTILINE)
    assert match, f"no section {title!r}"
    level = len(match.group(1))
    rest = README[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


RUN_STORAGE = section("Run storage")


def named(name: str) -> bool:
    return f"`{name}`" in RUN_STORAGE or re.search(rf"[{{,]\s*{re.escape(name)}\b[}},?]", RUN_STORAGE) is not None


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize(
    "cls", [RunRecord, Entity, OutputMeta, WorkflowMeta, RunOptions, CurrentState, Timings, StoredOutput, NodeProblem]
)
def test_every_field_of_the_record_is_documented(cls: type) -> None:
    assert [name for name in field_names(cls) if not named(name)] == []


def test_the_optional_record_fields_are_marked_so() -> None:
    text = section("`metadata.json`")
    first_table = text[text.index("\n|") : text.index("\n\n", text.index("\n|"))]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| ([^|]+) \|", first_table, re.MULTILINE)}
    assert set(rows) == set(field_names(RunRecord))
    for f in dataclasses.fields(RunRecord):
        if f.name in (
            "staged",
            "uploaded_inputs",
            "retried",
            "finished_at",
            "last_seq",
            "timings",
            "error",
            "cancel_reason",
        ):
            assert "optional" in rows[f.name], f.name
        else:
            assert "optional" not in rows[f.name], f.name


def test_every_event_type_and_its_data_fields_are_documented() -> None:
    journal = section("`events.jsonl`")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.+) \|$", journal, re.MULTILINE)}
    assert rows.pop("type") == "`data`"  # the header
    assert set(rows) == set(_TYPE_NAMES.values())
    for body, kind in _TYPE_NAMES.items():
        assert [name for name in field_names(body) if f"`{name}`" not in rows[kind]] == [], kind


def test_every_enum_value_is_documented() -> None:
    values = [s.value for s in RunStatus] + [c.value for c in FailureCode] + [k.value for k in MediaKind]
    assert [v for v in values if f"`{v}`" not in RUN_STORAGE] == []
    assert "`workflow`" in RUN_STORAGE and "`output_<kind>`" in RUN_STORAGE


def test_the_layout_the_size_limit_and_the_damage_handling_are_documented() -> None:
    assert layout.__doc__ is not None
    paths = re.findall(r"^\s+<root>/(.+?)\s{2,}\S", layout.__doc__, flags=re.MULTILINE)
    assert paths and [p for p in paths if f"<runs-dir>/{p} " not in RUN_STORAGE] == []
    assert f"`MAX_RECORD_BYTES` ({MAX_RECORD_BYTES // 2**20} MiB)" in RUN_STORAGE
    assert "`generation_damaged_run_folders_total`" in RUN_STORAGE and "`DATA_LOSS`" in RUN_STORAGE
    assert "422" in RUN_STORAGE


def test_the_record_example_is_a_record_exactly_as_the_service_writes_it() -> None:
    (block,) = re.findall(r"```json\n(.*?)```", RUN_STORAGE, flags=re.S)
    example = json.loads(block)
    record = RunRecord.from_json(block.encode(), example["run_id"])
    assert record.to_json() == example
    assert record.status is RunStatus.COMPLETED and [e.kind for e in record.outputs()] == [MediaKind.IMAGE]


def test_the_journal_example_lines_are_read_and_written_back_unchanged() -> None:
    (block,) = re.findall(r"```\n(\{\"seq\".*?)```", RUN_STORAGE, flags=re.S)
    lines = block.splitlines()
    assert len(lines) >= 2
    for line in lines:
        assert RunEvent.from_json("412d0523-81d3-437d-a6fe-eb5ec3a502c7", line).to_json() == line


def test_the_settings_table_lists_every_setting() -> None:
    table = section("generation_service settings")
    flags = ["--" + f.name.replace("_", "-") for f in dataclasses.fields(Settings)]
    assert [flag for flag in flags if f"`{flag}`" not in table] == []


def test_the_simulator_table_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        simulator_args(["--help"])
    flags = set(re.findall(r"^\s+(--[a-z-]+)", capsys.readouterr().out, flags=re.MULTILINE)) - {"--help"}
    assert flags >= {"--without-nodes", "--sampler-speed", "--swarm-backends", "--swarm-permissions"}
    simulator = section("The simulator")
    assert sorted(flag for flag in flags if f"`{flag}`" not in simulator) == []
    assert "`GET /sim/backends`" in simulator and "`POST /sim/backends`" in simulator


def test_the_failure_table_lists_every_failure_code() -> None:
    api = section("The gRPC API")
    codes = [name for name in pb.FailureCode.keys() if name != "FAILURE_CODE_UNSPECIFIED"]
    assert [code for code in codes if f"| `{code}` |" not in api] == []
    # and the journal's codes are these, by name
    assert {code.removeprefix("FAILURE_CODE_").lower() for code in codes} == {c.value for c in FailureCode}
