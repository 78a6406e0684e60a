"""Workflow templates: API-format workflows with typed, checked parameters.

    catalog = TemplateCatalog.load(SHIPPED_TEMPLATES_DIR)    # start-up: TemplateLoadError if any file is broken
    catalog.reload()                                         # cheap re-scan (mtimes); call per request or on SIGHUP
    applied = catalog.apply("ace_step_instrumental", {"tags": "lofi", "seconds": "12"}, run_id=run_id, store=store)
    names = [await backend.upload(u.read_bytes(), u.filename, u.subfolder) for u in applied.uploads]
    workflow = bind_uploads(applied.workflow, applied.uploads, names)
    applied.seed, applied.values                             # the drawn seed; every effective value

Modules: ``model`` (Template, Param, ParamType), ``values`` (parsing per type), ``loading`` (one file,
validated), ``media`` (bytes / run references → pending uploads), ``apply`` (filling a workflow),
``catalog`` (the folder and its reload), ``errors``. The templates shipped with the service are package
data in ``generation_service/templates/`` (``generation_service.settings.SHIPPED_TEMPLATES_DIR``, the
default ``templates_dir``).
"""

from __future__ import annotations

from .apply import AppliedTemplate, apply, bind_uploads
from .catalog import ReloadResult, TemplateCatalog
from .errors import FileProblem, Problem, TemplateError, TemplateLoadError, TemplateRequestError
from .loading import MANIFEST_SUFFIX, load_template
from .media import DEFAULT_MAX_MEDIA_BYTES, PendingUpload
from .model import Param, ParamType, ParamValue, Scalar, Target, Template

__all__ = [
    "DEFAULT_MAX_MEDIA_BYTES",
    "MANIFEST_SUFFIX",
    "AppliedTemplate",
    "FileProblem",
    "Param",
    "ParamType",
    "ParamValue",
    "PendingUpload",
    "Problem",
    "ReloadResult",
    "Scalar",
    "Target",
    "Template",
    "TemplateCatalog",
    "TemplateError",
    "TemplateLoadError",
    "TemplateRequestError",
    "apply",
    "bind_uploads",
    "load_template",
]
