"""The run-storage contract: ids, formats, atomic writes, and paths that never leave a run folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfy_generation.runstore import (
    CurrentState,
    DamagedRecord,
    Entity,
    InvalidRunId,
    MediaKind,
    OutputMeta,
    PartialFile,
    RunMissing,
    RunOptions,
    RunRecord,
    RunStatus,
    RunStore,
    atomic_file,
    detect_format,
    format_for_extension,
    new_run_id,
    open_run_file,
    parse_run_id,
    record_text,
    utc_now,
)
from comfy_generation.runstore.builder import write_finished_run
from comfy_generation.runstore.layout import NotARegularFile

TRANSCRIPTS = Path(__file__).parent / "data" / "comfyui-transcripts"


def test_new_run_ids_parse_and_malformed_ones_are_refused() -> None:
    run_id = new_run_id()
    assert parse_run_id(run_id) == run_id
    for bad in [
        "",
        "..",
        "../etc",
        run_id.upper(),
        run_id + "x",
        run_id.replace("-", ""),
        f"{run_id}/..",
        "a" * 500,
        run_id[:-1] + "\x00",
    ]:
        with pytest.raises(InvalidRunId):
            parse_run_id(bad)


@pytest.mark.parametrize(
    ("head", "name", "kind", "ext", "mime"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, "x.png", MediaKind.IMAGE, "png", "image/png"),
        (b"\xff\xd8\xff\xe0", "x.jpeg", MediaKind.IMAGE, "jpg", "image/jpeg"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "x.webp", MediaKind.IMAGE, "webp", "image/webp"),
        (b"ID3\x04\0\0", "x.mp3", MediaKind.AUDIO, "mp3", "audio/mpeg"),
        (b"\xff\xfb\x90\x00", "x", MediaKind.AUDIO, "mp3", "audio/mpeg"),
        (b"fLaC\0\0\0\x22", "x.flac", MediaKind.AUDIO, "flac", "audio/flac"),
        (b"OggS\0\x02" + b"\0" * 22 + b"OpusHead", "x.opus", MediaKind.AUDIO, "opus", "audio/ogg"),
        (b"RIFF\0\0\0\0WAVEfmt ", "x.wav", MediaKind.AUDIO, "wav", "audio/wav"),
        (b"\0\0\0\x20ftypisom", "x.mp4", MediaKind.VIDEO, "mp4", "video/mp4"),
        (b"\0\0\0\x20ftypM4A ", "x.m4a", MediaKind.AUDIO, "m4a", "audio/mp4"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "x.webm", MediaKind.VIDEO, "webm", "video/webm"),
        (b"glTF\x02\0\0\0", "x.glb", MediaKind.MODEL, "glb", "model/gltf-binary"),
        (b"unknown bytes", "x.xyz", MediaKind.FILE, "bin", "application/octet-stream"),
    ],
)
def test_format_is_decided_by_content(head: bytes, name: str, kind: MediaKind, ext: str, mime: str) -> None:
    fmt = detect_format(head, name)
    assert (fmt.kind, fmt.ext, fmt.mime) == (kind, ext, mime)


def test_content_wins_over_a_misleading_name() -> None:
    assert detect_format(b"\x89PNG\r\n\x1a\n", "audio_00001_.mp3").kind == MediaKind.IMAGE
    assert detect_format(b"\0\0\0\x20ftypisom", "clip.mp3").ext == "mp4"


def test_recorded_view_content_types_match_our_table() -> None:
    """Every file ComfyUI served in the transcripts gets the same type from our table (opus: audio/ogg)."""
    import json

    seen = 0
    for transcript in ["a_image.json", "b_audio.json", "c_video.json"]:
        for view in json.loads((TRANSCRIPTS / transcript).read_text())["steps"]["run"]["view"]:
            name = view["item"]["filename"]
            head = bytes.fromhex(view["get"]["response"]["body_first16_hex"])
            recorded = view["get"]["response"]["headers"]["Content-Type"]
            assert detect_format(head, name).mime == recorded, name
            seen += 1
    assert seen >= 6


def test_atomic_file_is_invisible_until_complete_and_cleaned_on_error(tmp_path: Path) -> None:
    target = tmp_path / "metadata.json"
    with atomic_file(target) as fh:
        fh.write(b"{}")
        assert not target.exists()
    assert target.read_bytes() == b"{}"
    with pytest.raises(RuntimeError), atomic_file(target) as fh:
        fh.write(b"torn")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata.json"]


def test_partial_file_commits_under_a_name_chosen_last(tmp_path: Path) -> None:
    with PartialFile(tmp_path, "download") as partial:
        partial.file.write(b"data")
        assert partial.path.name.startswith(".") and partial.path.name.endswith(".partial")
        partial.commit(tmp_path / "02_output_image.png")
    assert [p.name for p in tmp_path.iterdir()] == ["02_output_image.png"]
    assert oct((tmp_path / "02_output_image.png").stat().st_mode & 0o777) == oct(0o644)


def _output(sequence: int, filename: str) -> Entity:
    meta = OutputMeta("png", "image/png", 1, "0" * 64, "9", "x.png", "", "output")
    return Entity(sequence, "output_image", filename, utc_now(), meta)


def test_entity_paths_never_leave_the_run_folder(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    run_id, other = new_run_id(), new_run_id()
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True)
    store.run_dir(other).mkdir()
    (run_dir / "02_output_image.png").write_bytes(b"x")
    (tmp_path / "runs" / other / "secret.png").write_bytes(b"secret")
    os.symlink(tmp_path / "runs" / other / "secret.png", run_dir / "03_output_image.png")
    assert store.entity_path(run_id, _output(2, "02_output_image.png")) == (run_dir / "02_output_image.png")
    assert store.entity_path(run_id, _output(3, "03_output_image.png")) is None  # a symlink
    assert store.entity_path(run_id, _output(4, "04_output_image.png")) is None  # missing


def test_open_run_file_follows_no_symlink(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    run_id, linked = new_run_id(), new_run_id()
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "02_output_image.png").write_bytes(b"real")
    (tmp_path / "outside.png").write_bytes(b"outside")
    os.symlink(tmp_path / "outside.png", run_dir / "03_output_image.png")
    os.mkfifo(run_dir / "04_output_image.png")  # would block a plain open for reading
    os.symlink(run_dir, store.run_dir(linked))  # a whole run folder that is a symlink

    fd, st = open_run_file(run_dir / "02_output_image.png")
    try:
        assert os.read(fd, 100) == b"real" and st.st_size == 4
    finally:
        os.close(fd)
    for path in [
        run_dir / "03_output_image.png",
        run_dir / "04_output_image.png",
        run_dir / "missing.png",
        store.run_dir(linked) / "02_output_image.png",
    ]:
        with pytest.raises((FileNotFoundError, NotADirectoryError, NotARegularFile)):
            open_run_file(path)


@pytest.mark.parametrize(
    "name", ["../x/02_output_image.png", "/etc/passwd", ".", "", ".hidden", "02_a\nb.png", "é.png"]
)
def test_a_record_naming_a_file_outside_its_folder_is_damaged(name: str) -> None:
    run_id = new_run_id()
    record = RunRecord(
        run_id, utc_now(), RunStatus.COMPLETED, "", "", "", RunOptions(), CurrentState("completed"), (_output(2, name),)
    )
    with pytest.raises(DamagedRecord, match=r"entities\[0\]\.filename"):
        RunRecord.from_json(record_text(record).encode(), run_id)


def test_record_round_trip_and_unknown_runs(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = write_finished_run(tmp_path, [(b"\x89PNG\r\n\x1a\n", "a.png")])
    record = store.read_record(run_id)
    assert RunRecord.from_json(record_text(record).encode(), run_id) == record
    assert [e.filename for e in record.outputs()] == ["02_output_image.png"]
    with pytest.raises(RunMissing):
        store.read_record(new_run_id())
    assert format_for_extension(".JPEG") == format_for_extension("jpg")
