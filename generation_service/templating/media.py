"""Media parameters: the caller's bytes or an earlier run's output, turned into a pending upload.

Nothing here touches the network: ``resolve_media`` checks the value and says what to upload under which
per-run name; the caller uploads (``ComfyBackend.upload``) and binds the names the backend returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from comfy_generation.runstore import (
    SNIFF_BYTES,
    DamagedRecord,
    InvalidRunId,
    MediaKind,
    RunMissing,
    RunStore,
    detect_format,
    parse_run_id,
)
from generation_service.workflow import PREFIX_ROOT

from .model import Param, Target
from .values import shown

DEFAULT_MAX_MEDIA_BYTES = 50 * 1024 * 1024
RUN_REF = re.compile(r"^run:(?P<run_id>[^/]+)/(?P<kind>[a-z]+)(?:/(?P<index>-?\d+))?$")
_KIND_ALIASES = {"music": "audio"}
_EXAMPLES = {MediaKind.IMAGE: "PNG, JPEG, WebP or GIF", MediaKind.AUDIO: "MP3, FLAC, WAV, Ogg/Opus or M4A"}


@dataclass(frozen=True)
class PendingUpload:
    """A file to upload before the workflow is submitted: exactly one of ``data`` / ``path`` is set.

    ``filename`` and ``subfolder`` are unique to the run (``gensvc/<run_id>/<param>.<ext>``), so
    ``ComfyBackend.upload(data, filename, subfolder)`` never overwrites another run's input.
    """

    param: str
    kind: MediaKind
    filename: str
    subfolder: str
    targets: tuple[Target, ...]
    data: bytes | None = None
    path: Path | None = None

    @property
    def name(self) -> str:
        """The name a Load* node takes when the backend keeps the file name (``subfolder/filename``)."""
        return f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename

    def read_bytes(self) -> bytes:
        """The file's content (reads ``path`` from disk: call it off the event loop)."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f} MiB"


def resolve_media(param: Param, value: object, *, run_id: str, store: RunStore | None, max_bytes: int) -> PendingUpload:
    """The upload for one media parameter; ``ValueError`` with a message saying what to send instead."""
    kind = param.type.media_kind
    assert kind is not None
    subfolder = f"{PREFIX_ROOT}/{run_id}"
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if len(data) > max_bytes:
            raise ValueError(f"the file is {_mib(len(data))}, over the {_mib(max_bytes)} limit; send a smaller one")
        found = detect_format(data[:SNIFF_BYTES], "")
        if found.kind is not kind:
            what = "an unknown format" if found.kind is MediaKind.FILE else f"{found.kind.value} ({found.ext})"
            raise ValueError(f"the bytes are {what}, not {kind.value}; send a {_EXAMPLES.get(kind, kind.value)} file")
        return PendingUpload(param.name, kind, f"{param.name}.{found.ext}", subfolder, param.targets, data=data)
    if isinstance(value, str) and value.startswith("run:"):
        path, ext = _run_output(value, kind, store)
        return PendingUpload(param.name, kind, f"{param.name}.{ext}", subfolder, param.targets, path=path)
    raise ValueError(
        f"send the {kind.value} file's bytes, or a reference run:<run_id>/{kind.value}/<index> to an earlier "
        "run's output"
    )


def _run_output(ref: str, kind: MediaKind, store: RunStore | None) -> tuple[Path, str]:
    match = RUN_REF.fullmatch(ref)
    if match is None:
        raise ValueError(f"{shown(ref)} is not a run reference; write run:<run_id>/{kind.value}/<index>")
    ref_kind = _KIND_ALIASES.get(match["kind"], match["kind"])
    if ref_kind != kind.value:
        raise ValueError(f"{shown(ref)} refers to a {match['kind']} output; this parameter takes {kind.value}")
    try:
        run_id = parse_run_id(match["run_id"])
    except InvalidRunId:
        raise ValueError(f"{shown(match['run_id'])} is not a run id (a lowercase hyphenated UUID)") from None
    if store is None:
        raise ValueError(f"run {run_id} does not exist here; refer to a run of this service")
    try:
        record = store.read_record(run_id)
    except RunMissing:
        raise ValueError(f"run {run_id} does not exist here; refer to a run of this service") from None
    except DamagedRecord as exc:
        raise ValueError(f"{exc}: refer to another run's output") from None
    outputs = record.outputs(kind)
    if not outputs:
        raise ValueError(f"run {run_id} has no {kind.value} output")
    index = int(match["index"]) if match["index"] is not None else len(outputs) - 1
    if not 0 <= index < len(outputs):
        raise ValueError(
            f"run {run_id} has {len(outputs)} {kind.value} output(s): use an index from 0 to {len(outputs) - 1}"
        )
    path = store.entity_path(run_id, outputs[index])
    if path is None:
        raise ValueError(f"the file of {shown(ref)} is missing from run storage")
    return path, path.suffix.lstrip(".") or "bin"
