"""The template library: loading and validating templates, parsing parameters, media, reload."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from comfy_generation.runstore import RunStore, new_run_id
from comfy_generation.runstore.builder import write_finished_run
from generation_service.settings import SHIPPED_TEMPLATES_DIR
from generation_service.templating import (
    Template,
    TemplateCatalog,
    TemplateLoadError,
    TemplateRequestError,
    apply,
    bind_uploads,
    load_template,
)

RUN_ID = "0b0e3c9e-5a8e-4f57-9a51-3d2c1f0e9a11"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
MP3 = b"ID3" + b"\0" * 64

WORKFLOW: dict[str, Any] = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "old", "clip": ["1", 1]}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "old", "clip": ["1", 1]}},
    "4": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "5": {
        "class_type": "KSampler",
        "inputs": {"seed": 0, "steps": 20, "cfg": 5.0, "sampler_name": "euler", "denoise": 1.0, "model": ["1", 0]},
    },
    "6": {"class_type": "LoadAudio", "inputs": {"audio": "a.wav"}},
    "7": {"class_type": "SaveAnything", "inputs": {"enabled": True, "filename_prefix": "x"}},
    "8": {"class_type": "LoadVideo", "inputs": {"file": "v.mp4"}},
}


def target(node: str, name: str) -> list[dict[str, str]]:
    return [{"node": node, "input": name}]


def params_spec() -> dict[str, Any]:
    return {
        "prompt": {
            "type": "string",
            "description": "the prompt",
            "targets": [*target("2", "text"), *target("3", "text")],
        },
        "steps": {
            "type": "int",
            "default": 20,
            "min": 1,
            "max": 50,
            "description": "steps",
            "targets": target("5", "steps"),
        },
        "cfg": {
            "type": "float",
            "default": 5.0,
            "min": 0.0,
            "max": 20.0,
            "description": "cfg",
            "targets": target("5", "cfg"),
        },
        "seed": {"type": "seed", "default": "random", "description": "seed", "targets": target("5", "seed")},
        "sampler": {
            "type": "enum",
            "default": "euler",
            "choices": ["euler", "uni_pc"],
            "description": "sampler",
            "targets": target("5", "sampler_name"),
        },
        "save": {"type": "bool", "default": True, "description": "save", "targets": target("7", "enabled")},
    }


def write_template(
    folder: Path, name: str = "demo", *, params: Any = None, workflow: Any = None, **manifest: Any
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.workflow.json").write_text(json.dumps(WORKFLOW if workflow is None else workflow))
    body = {
        "description": "a test template",
        "media": "image",
        "workflow": f"{name}.workflow.json",
        "parameters": params_spec() if params is None else params,
        **manifest,
    }
    path = folder / f"{name}.template.json"
    path.write_text(json.dumps(body))
    return path


@pytest.fixture
def template(tmp_path: Path) -> Template:
    return load_template(write_template(tmp_path))


def media_template(tmp_path: Path) -> Template:
    params = {
        "picture": {"type": "image", "description": "input picture", "targets": target("4", "image")},
        "sound": {"type": "audio", "description": "input sound", "targets": target("6", "audio")},
    }
    return load_template(write_template(tmp_path, "media", params=params))


def problems(exc: pytest.ExceptionInfo[TemplateRequestError]) -> dict[str | None, str]:
    return {p.param: p.message for p in exc.value.problems}


# ---- loading -------------------------------------------------------------------------------------------


def test_shipped_templates_load_and_describe() -> None:
    catalog = TemplateCatalog.load(SHIPPED_TEMPLATES_DIR)
    names = {t.name: t.media.value for t in catalog.templates()}
    assert names == {
        "ace_step_instrumental": "audio",
        "blur_image": "image",
        "sd35_image_to_image": "image",
        "sd35_text_to_image": "image",
        "silent_audio": "audio",
        "solid_image": "image",
        "solid_video": "video",
        "wan22_5b_text_to_video": "video",
    }
    described = catalog.get("ace_step_instrumental").describe()
    assert [p["name"] for p in described["parameters"]] == ["tags", "lyrics", "seconds", "steps", "cfg", "seed"]
    seconds = described["parameters"][2]
    assert seconds == {
        "name": "seconds",
        "type": "float",
        "description": "Length of the music in seconds.",
        "default": 30.0,
        "min": 1.0,
        "max": 240.0,
        "required": False,
    }


def test_every_problem_of_a_broken_template_is_named(tmp_path: Path) -> None:
    params = {
        "steps": {
            "type": "int",
            "default": 99,
            "min": 1,
            "max": 50,
            "description": "x",
            "targets": target("5", "steps"),
        },
        "ghost": {"type": "string", "default": "a", "description": "x", "targets": target("42", "text")},
        "nope": {"type": "string", "default": "a", "description": "x", "targets": target("2", "txt")},
        "link": {"type": "string", "default": "a", "description": "x", "targets": target("2", "clip")},
        "pick": {
            "type": "enum",
            "default": "c",
            "choices": ["a", "b"],
            "description": "x",
            "targets": target("5", "sampler_name"),
        },
        "kind": {"type": "float", "default": 1.0, "description": "x", "targets": target("2", "text")},
        "pic": {"type": "audio", "description": "x", "targets": target("4", "image")},
        "vid": {"type": "video", "default": "v.mp4", "description": "x", "targets": target("8", "file")},
        "Bad-Name": {"type": "text", "description": "x", "targets": []},
        "dup": {"type": "int", "default": 1, "description": "", "targets": target("5", "steps"), "bounds": 3},
    }
    path = write_template(tmp_path, params=params, media="sound", extra=1)
    with pytest.raises(TemplateLoadError) as exc:
        load_template(path)
    messages = [p.message for p in exc.value.problems]
    assert all(p.path == path for p in exc.value.problems)
    expected = [
        "unknown key 'extra'",
        "'media' must be one of image, audio, video, model, not 'sound'",
        "parameter 'steps': the default 99 does not satisfy the parameter itself: 99 is above the maximum 50",
        "parameter 'ghost': node 42 input 'text': the workflow has no node '42'",
        "parameter 'nope': node 2 input 'txt': node 2 (CLIPTextEncode) has no input 'txt' (it has: clip, text)",
        "parameter 'link': node 2 input 'clip': the input is a link from another node",
        "parameter 'pick': the default 'c' does not satisfy the parameter itself: 'c' is not one of the choices",
        "parameter 'kind': node 2 input 'text': the input holds 'old', which a float parameter cannot replace",
        "parameter 'pic': node 4 input 'image': LoadImage loads image files; this is a audio parameter",
        "parameter 'vid': media parameters cannot have a default",
        "parameter 'Bad-Name': names use lowercase letters",
        "parameter 'Bad-Name': 'type' must be one of string, int, float, bool, seed, enum, image, audio, video",
        "parameter 'dup': unknown key 'bounds'",
        "parameter 'dup': 'description' must be a non-empty string",
        "parameter 'dup': node 5 input 'steps' is already set by parameter 'steps'",
    ]
    for text in expected:
        assert any(m.startswith(text) for m in messages), (text, messages)
    assert len(messages) == len(expected)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "the manifest is not valid JSON"),
        ("[1, 2]", "the manifest must be a JSON object"),
    ],
)
def test_unreadable_manifest(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.template.json"
    path.write_text(content)
    with pytest.raises(TemplateLoadError, match=message):
        load_template(path)


def test_broken_workflow_file_is_named(tmp_path: Path) -> None:
    write_template(tmp_path, "a", workflow={"nodes": [], "links": []})
    (tmp_path / "b.template.json").write_text(
        json.dumps({"description": "b", "media": "image", "workflow": "none.json"})
    )
    write_template(tmp_path, "c", workflow={}, params={})
    (tmp_path / "c.workflow.json").write_text("{")
    (tmp_path / "d.template.json").write_text(
        json.dumps({"description": "d", "media": "image", "workflow": "../x.json"})
    )
    with pytest.raises(TemplateLoadError) as exc:
        TemplateCatalog.load(tmp_path)
    found = {p.path.name: p.message for p in exc.value.problems}
    assert found["a.workflow.json"].startswith("workflow_json is a UI-format workflow; export it from ComfyUI with")
    assert found["b.template.json"] == "'workflow' 'none.json' does not exist next to the manifest"
    assert found["c.workflow.json"].startswith("workflow_json is not valid JSON")
    assert found["d.template.json"] == "'workflow' '../x.json' points outside the template folder"


def test_missing_folder_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(TemplateLoadError, match="the template folder does not exist"):
        TemplateCatalog.load(tmp_path / "nowhere")


# ---- applying ------------------------------------------------------------------------------------------


def test_values_are_parsed_set_and_reported(template: Template) -> None:
    applied = apply(
        template,
        {"prompt": "a cat", "steps": "12", "cfg": "7.5", "seed": 42, "sampler": "uni_pc", "save": "false"},
        run_id=RUN_ID,
    )
    graph = applied.workflow
    assert graph["2"]["inputs"]["text"] == graph["3"]["inputs"]["text"] == "a cat"
    inputs = graph["5"]["inputs"]
    assert (inputs["steps"], inputs["cfg"], inputs["seed"], inputs["sampler_name"]) == (12, 7.5, 42, "uni_pc")
    assert type(inputs["steps"]) is int and type(inputs["cfg"]) is float
    assert graph["7"]["inputs"]["enabled"] is False
    assert applied.values == {
        "prompt": "a cat",
        "steps": 12,
        "cfg": 7.5,
        "seed": 42,
        "sampler": "uni_pc",
        "save": False,
    }
    assert applied.seed == 42 and applied.uploads == ()
    assert template.workflow["2"]["inputs"]["text"] == "old"  # the template itself is untouched


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("steps", 12.0, 12),
        ("steps", " 7 ", 7),
        ("cfg", 3, 3.0),
        ("cfg", "1e1", 10.0),
        ("save", "YES", True),
        ("save", 0, False),
        ("seed", "18446744073709551615", 2**64 - 1),
    ],
)
def test_type_parsing(template: Template, name: str, value: Any, expected: Any) -> None:
    applied = apply(template, {"prompt": "p", name: value}, run_id=RUN_ID)
    assert applied.values[name] == expected and type(applied.values[name]) is type(expected)


def test_every_request_problem_is_reported_at_once(template: Template) -> None:
    with pytest.raises(TemplateRequestError) as exc:
        apply(
            template,
            {"step": 3, "steps": "abc", "cfg": 25, "seed": "lucky", "sampler": "dpm", "save": "maybe"},
            run_id=RUN_ID,
        )
    found = problems(exc)
    assert found == {
        "step": "unknown parameter; did you mean 'steps'? "
        "template 'demo' takes: prompt, steps, cfg, seed, sampler, save",
        "prompt": "missing: send a string value (the prompt)",
        "steps": "'abc' is not a whole number; send one such as 20",
        "cfg": "25.0 is above the maximum 20.0; send a value from 0.0 to 20.0",
        "seed": "'lucky' is not a seed; send a whole number or \"random\"",
        "sampler": "'dpm' is not one of the choices; send one of: euler, uni_pc",
        "save": "'maybe' is not a yes/no value; send true or false",
    }
    assert [p.field for p in exc.value.problems][:2] == ["params.step", "params.prompt"]
    assert str(exc.value).startswith("template 'demo': params.step: unknown parameter")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("steps", 0, "0 is below the minimum 1; send a value from 1 to 50"),
        ("steps", 2.5, "2.5 is not a whole number"),
        ("steps", True, "True is not a whole number"),
        ("cfg", "nan", "'nan' is not a finite number"),
        ("cfg", b"1", "b'1' is not a number"),
        ("prompt", 5, "5 is not text; send a string"),
        ("seed", -1, "-1 is below the minimum 0"),
    ],
)
def test_out_of_range_and_mistyped(template: Template, name: str, value: Any, message: str) -> None:
    with pytest.raises(TemplateRequestError) as exc:
        apply(template, {"prompt": "p", name: value}, run_id=RUN_ID)
    assert problems(exc)[name].startswith(message)


def test_int_steps_and_numeric_enums(tmp_path: Path) -> None:
    params = {
        "frames": {
            "type": "int",
            "default": 5,
            "min": 1,
            "max": 99,
            "step": 4,
            "description": "f",
            "targets": target("5", "steps"),
        },
        "rate": {
            "type": "enum",
            "default": 44100,
            "choices": [22050, 44100],
            "description": "r",
            "targets": target("5", "cfg"),
        },
        "text": {"type": "string", "default": "", "max_length": 3, "description": "t", "targets": target("2", "text")},
    }
    template = load_template(write_template(tmp_path, params=params))
    assert apply(template, {"frames": 9, "rate": "22050"}, run_id=RUN_ID).workflow["5"]["inputs"]["cfg"] == 22050
    with pytest.raises(TemplateRequestError) as exc:
        apply(template, {"frames": 10, "rate": 8000, "text": "abcd"}, run_id=RUN_ID)
    assert problems(exc) == {
        "frames": "10 is not allowed: values go in steps of 4 (1, 5, 9, ...); send 9 or 13",
        "rate": "8000 is not one of the choices; send one of: 22050, 44100",
        "text": "is 4 characters long; send at most 3",
    }


def test_random_seed_is_drawn_and_reported(template: Template) -> None:
    first = apply(template, {"prompt": "p"}, run_id=RUN_ID, rng=random.Random(1))
    again = apply(template, {"prompt": "p", "seed": "Random"}, run_id=RUN_ID, rng=random.Random(1))
    other = apply(template, {"prompt": "p"}, run_id=RUN_ID, rng=random.Random(2))
    assert first.seed == again.seed != other.seed
    assert first.seed is not None and 0 <= first.seed < 2**32
    assert first.workflow["5"]["inputs"]["seed"] == first.seed == first.values["seed"]
    assert first.seeds == {"seed": first.seed}


@pytest.mark.parametrize(
    "text",
    [
        'say "hello" and \\"escape\\"',
        "line one\nline two\r\n\ttabbed",
        "ünïcødé 色调艳丽 🎵 {{PROMPT}} </script>",
        "",
    ],
)
def test_awkward_strings_land_verbatim(template: Template, text: str) -> None:
    graph = apply(template, {"prompt": text}, run_id=RUN_ID).workflow
    assert graph["2"]["inputs"]["text"] == text
    assert json.loads(json.dumps(graph))["3"]["inputs"]["text"] == text


def test_unknown_template_is_a_request_problem(tmp_path: Path) -> None:
    write_template(tmp_path)
    catalog = TemplateCatalog.load(tmp_path)
    with pytest.raises(TemplateRequestError) as exc:
        catalog.apply("dmeo", {}, run_id=RUN_ID)
    assert [(p.field, p.message) for p in exc.value.problems] == [
        ("template", "unknown template 'dmeo'; known templates: demo")
    ]


# ---- media ---------------------------------------------------------------------------------------------


def test_media_bytes_become_per_run_uploads(tmp_path: Path) -> None:
    template = media_template(tmp_path)
    applied = apply(template, {"picture": PNG, "sound": MP3}, run_id=RUN_ID)
    picture, sound = applied.uploads
    assert (picture.param, picture.filename, picture.subfolder, picture.data) == (
        "picture",
        "picture.png",
        f"gensvc/{RUN_ID}",
        PNG,
    )
    assert (sound.filename, sound.read_bytes()) == ("sound.mp3", MP3)
    assert applied.workflow["4"]["inputs"]["image"] == f"gensvc/{RUN_ID}/picture.png"
    assert applied.values["picture"].startswith(f"upload: {len(PNG)} bytes, sha256 ")
    bound = bind_uploads(applied.workflow, applied.uploads, ["in/p.png", "in/s.mp3"])
    assert (bound["4"]["inputs"]["image"], bound["6"]["inputs"]["audio"]) == ("in/p.png", "in/s.mp3")
    with pytest.raises(ValueError, match="2 uploads but 1 names"):
        bind_uploads(applied.workflow, applied.uploads, ["x"])


def test_media_problems(tmp_path: Path) -> None:
    template = media_template(tmp_path)
    with pytest.raises(TemplateRequestError) as exc:
        apply(template, {"picture": PNG * 2, "sound": PNG}, run_id=RUN_ID, max_media_bytes=len(PNG) + 1)
    assert problems(exc) == {
        "picture": "the file is 0.0 MiB, over the 0.0 MiB limit; send a smaller one",
        "sound": "the bytes are image (png), not audio; send a MP3, FLAC, WAV, Ogg/Opus or M4A file",
    }
    with pytest.raises(TemplateRequestError) as exc:
        apply(template, {"picture": "cat.png"}, run_id=RUN_ID)
    assert problems(exc) == {
        "picture": "send the image file's bytes, or a reference run:<run_id>/image/<index> to an earlier run's output",
        "sound": "missing: send the audio file's bytes or run:<run_id>/audio/<index> (input sound)",
    }


def store_with_run(root: Path) -> tuple[RunStore, str]:
    run_id = write_finished_run(root, [(PNG, "a.png"), (MP3, "a.mp3"), (PNG + b"2", "b.png")])
    return RunStore(root), run_id


def test_run_references_resolve_through_run_storage(tmp_path: Path) -> None:
    store, run_id = store_with_run(tmp_path / "runs")
    template = media_template(tmp_path / "templates")
    applied = apply(
        template, {"picture": f"run:{run_id}/image/0", "sound": f"run:{run_id}/music"}, run_id=RUN_ID, store=store
    )
    picture, sound = applied.uploads
    assert picture.path == store.run_dir(run_id) / "02_output_image.png" and picture.data is None
    assert picture.read_bytes() == PNG and picture.filename == "picture.png"
    assert sound.path == store.run_dir(run_id) / "03_output_audio.mp3"
    assert applied.values["picture"] == f"run:{run_id}/image/0"
    latest = apply(template, {"picture": f"run:{run_id}/image", "sound": MP3}, run_id=RUN_ID, store=store)
    assert latest.uploads[0].read_bytes() == PNG + b"2"


def test_bad_run_references(tmp_path: Path) -> None:
    store, run_id = store_with_run(tmp_path / "runs")
    template = media_template(tmp_path / "templates")
    missing = new_run_id()
    cases = {
        f"run:{missing}/image/0": f"run {missing} does not exist here; refer to a run of this service",
        f"run:{run_id}/image/5": f"run {run_id} has 2 image output(s): use an index from 0 to 1",
        f"run:{run_id}/audio/0": f"'run:{run_id}/audio/0' refers to a audio output; this parameter takes image",
        "run:../../etc/image/0": "'run:../../etc/image/0' is not a run reference; write run:<run_id>/image/<index>",
        "run:NOT-A-UUID/image/0": "'NOT-A-UUID' is not a run id (a lowercase hyphenated UUID)",
    }
    for ref, message in cases.items():
        with pytest.raises(TemplateRequestError) as exc:
            apply(template, {"picture": ref, "sound": MP3}, run_id=RUN_ID, store=store)
        assert problems(exc)["picture"] in (
            message,
            f"{ref!r} is not a run reference; write run:<run_id>/image/<index>",
        )
    (store.run_dir(run_id) / "02_output_image.png").unlink()
    with pytest.raises(TemplateRequestError) as exc:
        apply(template, {"picture": f"run:{run_id}/image/0", "sound": MP3}, run_id=RUN_ID, store=store)
    assert problems(exc)["picture"] == f"the file of 'run:{run_id}/image/0' is missing from run storage"


# ---- reload --------------------------------------------------------------------------------------------


def bump(path: Path) -> None:
    """Move the mtime forward: a rewrite within the filesystem's timestamp granularity must still count."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_reload_picks_up_new_changed_and_removed_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_template(tmp_path, "one")
    catalog = TemplateCatalog.load(tmp_path)
    assert [t.name for t in catalog.templates()] == ["one"]
    assert not catalog.reload().changed
    write_template(tmp_path, "two")
    assert catalog.reload().added == ("two",)
    workflow = json.loads((tmp_path / "two.workflow.json").read_text())
    workflow["2"]["inputs"]["text"] = "new default text"
    (tmp_path / "two.workflow.json").write_text(json.dumps(workflow))
    bump(tmp_path / "two.workflow.json")
    assert catalog.reload().updated == ("two",)
    assert catalog.get("two").workflow["2"]["inputs"]["text"] == "new default text"
    (tmp_path / "one.template.json").unlink()
    assert catalog.reload().removed == ("one",)
    assert [t.name for t in catalog.templates()] == ["two"]


def test_a_file_broken_after_start_up_keeps_the_last_good_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_template(tmp_path, "one")
    catalog = TemplateCatalog.load(tmp_path)
    path.write_text(
        json.dumps({"description": "x", "media": "image", "workflow": "one.workflow.json", "parameters": 3})
    )
    bump(path)
    (tmp_path / "new.template.json").write_text("{")
    result = catalog.reload()
    assert not result.changed
    assert {p.path.name for p in result.problems} == {"one.template.json", "new.template.json"}
    assert [t.name for t in catalog.templates()] == ["one"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and any("the previous version stays in service" in r.getMessage() for r in errors)
    caplog.clear()
    assert catalog.reload().problems and not caplog.records  # logged once, not on every scan
    write_template(tmp_path, "one")
    bump(path)
    assert catalog.reload().updated == ("one",)
