"""Run storage: the on-disk contract shared by the generation service (the writer) and the media gateway
(a reader). It imports nothing from gRPC.

- ``layout``: where a run's files live (``RunStore``), reading them back, the journal's append side;
- ``record``: the run record ``metadata.json`` as typed classes (``RunRecord``), with its strict reader;
- ``events``: a run's events and their line in ``events.jsonl``;
- ``formats``: media kinds, the MIME table and content sniffing;
- ``files``: atomic writes; ``ids``: run ids; ``urls``: output URLs and their signatures;
- ``schema``: the typed field reader and ``DamagedRecord``, the one error a damaged file raises.
"""

from comfy_generation.runstore.files import PARTIAL_SUFFIX, PartialFile, atomic_file, write_text_atomic
from comfy_generation.runstore.formats import (
    SNIFF_BYTES,
    UNKNOWN_FORMAT,
    MediaFormat,
    MediaKind,
    detect_format,
    format_for_extension,
)
from comfy_generation.runstore.ids import InvalidRunId, new_run_id, parse_run_id, utc_now
from comfy_generation.runstore.layout import JournalWriter, RunMissing, RunStore, open_run_file, record_text
from comfy_generation.runstore.record import (
    MAX_RECORD_BYTES,
    METADATA_FILE,
    CurrentState,
    Entity,
    OutputMeta,
    RunOptions,
    RunRecord,
    RunStatus,
    Timings,
    WorkflowMeta,
    entity_filename,
)
from comfy_generation.runstore.schema import DamagedRecord
from comfy_generation.runstore.urls import (
    file_path,
    file_signature_problem,
    media_url,
    output_url,
    sign_file_path,
    sign_media_path,
    signature_problem,
    signed_media_url,
)

__all__ = [
    "MAX_RECORD_BYTES",
    "METADATA_FILE",
    "PARTIAL_SUFFIX",
    "SNIFF_BYTES",
    "UNKNOWN_FORMAT",
    "CurrentState",
    "DamagedRecord",
    "Entity",
    "InvalidRunId",
    "JournalWriter",
    "MediaFormat",
    "MediaKind",
    "OutputMeta",
    "PartialFile",
    "RunMissing",
    "RunOptions",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "Timings",
    "WorkflowMeta",
    "atomic_file",
    "detect_format",
    "entity_filename",
    "file_path",
    "file_signature_problem",
    "format_for_extension",
    "media_url",
    "new_run_id",
    "open_run_file",
    "output_url",
    "parse_run_id",
    "record_text",
    "sign_file_path",
    "sign_media_path",
    "signature_problem",
    "signed_media_url",
    "utc_now",
    "write_text_atomic",
]
