"""The template folder: loaded strictly at start-up, re-scanned cheaply afterwards.

``reload`` stats the folder's manifests and their workflow files and re-reads only those whose
``(mtime_ns, size)`` changed, so it costs one ``scandir`` plus two ``stat`` calls per template and can run
on every ListTemplates / Generate. A file that breaks after start-up does not take the service down: the
problem is logged once (until the file changes again) and the last good version of that template stays in
service; a broken new file is simply not offered.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from comfy_generation.runstore import RunStore

from .apply import AppliedTemplate, apply
from .errors import FileProblem, Problem, TemplateLoadError, TemplateRequestError
from .loading import MANIFEST_SUFFIX, load_template, template_name
from .media import DEFAULT_MAX_MEDIA_BYTES
from .model import ParamValue, Template
from .values import shown

logger = logging.getLogger(__name__)
Stamp = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ReloadResult:
    """What a reload changed; ``problems`` are the files that are broken now (each logged once)."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    problems: tuple[FileProblem, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


@dataclass
class _Entry:
    watched: tuple[Path, ...]  # the manifest, and its workflow file when known
    stamp: Stamp  # (mtime_ns, size) of each watched file when it was read
    template: Template | None  # the last good version; None when the file never loaded
    problems: tuple[FileProblem, ...] = field(default=())

    def unchanged(self) -> bool:
        return tuple(_stat(p) for p in self.watched) == self.stamp


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


class TemplateCatalog:
    """Every template of one folder (``<name>.template.json`` plus the workflow file it names)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._entries: dict[Path, _Entry] = {}

    @classmethod
    def load(cls, folder: Path) -> TemplateCatalog:
        """Load the folder for start-up: any broken file raises TemplateLoadError naming every file and
        problem, so the service refuses to start instead of serving half its templates."""
        if not Path(folder).is_dir():
            raise TemplateLoadError((FileProblem(Path(folder), "the template folder does not exist"),))
        catalog = cls(folder)
        result = catalog.reload(log=False)
        if result.problems:
            raise TemplateLoadError(result.problems)
        return catalog

    def reload(self, *, log: bool = True) -> ReloadResult:
        """Re-scan the folder; re-read only manifests / workflows whose mtime or size changed."""
        manifests = self._manifests()
        added: list[str] = []
        updated: list[str] = []
        problems: list[FileProblem] = []
        removed = [template_name(p) for p, e in self._entries.items() if p not in manifests and e.template]
        if removed and log:
            logger.info("templates removed: %s", ", ".join(removed))
        self._entries = {p: e for p, e in self._entries.items() if p in manifests}
        for path in manifests:
            entry = self._entries.get(path)
            if entry is not None and entry.unchanged():
                problems += entry.problems
                continue
            fresh = self._read(path, entry, log)
            self._entries[path] = fresh
            problems += fresh.problems
            if fresh.template is not None and not fresh.problems:
                (updated if entry is not None and entry.template is not None else added).append(template_name(path))
        return ReloadResult(tuple(added), tuple(updated), tuple(removed), tuple(problems))

    def _manifests(self) -> list[Path]:
        try:
            with os.scandir(self.folder) as it:
                names = [e.name for e in it if e.name.endswith(MANIFEST_SUFFIX) and e.is_file()]
        except OSError as exc:
            logger.error("cannot scan the template folder %s: %s", self.folder, exc)
            return list(self._entries)
        return sorted(self.folder / n for n in names)

    def _read(self, path: Path, previous: _Entry | None, log: bool) -> _Entry:
        try:
            template = load_template(path)
        except TemplateLoadError as exc:
            # Watch every file named in the problems too: fixing a broken workflow file is picked up.
            watched = tuple(dict.fromkeys((path, *(p.path for p in exc.problems))))
            kept = previous.template if previous is not None else None
            if log:
                still = "; the previous version stays in service" if kept is not None else ""
                logger.error("template %s not loaded%s: %s", template_name(path), still, exc)
            return _Entry(watched, tuple(_stat(p) for p in watched), kept, exc.problems)
        if log:
            logger.info("template %s loaded from %s", template.name, path.name)
        watched = (path, template.workflow_path)
        return _Entry(watched, tuple(_stat(p) for p in watched), template)

    def templates(self) -> list[Template]:
        """The templates in service, by name."""
        found = [e.template for e in self._entries.values() if e.template is not None]
        return sorted(found, key=lambda t: t.name)

    def get(self, name: str) -> Template:
        """The template called ``name``; TemplateRequestError (naming the known ones) if there is none."""
        for template in self.templates():
            if template.name == name:
                return template
        known = ", ".join(t.name for t in self.templates()) or "none"
        raise TemplateRequestError(name, (Problem(None, f"unknown template {shown(name)}; known templates: {known}"),))

    def apply(
        self,
        name: str,
        params: Mapping[str, ParamValue],
        *,
        run_id: str,
        store: RunStore | None = None,
        max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
        rng: random.Random | None = None,
    ) -> AppliedTemplate:
        """``get(name)`` then ``apply``: one TemplateRequestError for whatever is wrong with the request."""
        template = self.get(name)
        return apply(template, params, run_id=run_id, store=store, max_media_bytes=max_media_bytes, rng=rng)
