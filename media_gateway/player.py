"""The run page: plain HTML (no script, no build step) showing a run's status and playing every output."""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
h1{font-size:1.3rem;word-break:break-all}
.status{display:inline-block;padding:.1rem .6rem;border-radius:.8rem;background:#eee}
.status-completed{background:#d7f5dd}.status-failed,.status-cancelled{background:#f8d7da}
section.output{border-top:1px solid #ddd;padding:1rem 0}
img,video{max-width:100%;height:auto;background:#000}audio{width:100%}
table{border-collapse:collapse;margin-top:.6rem;font-size:.85rem}
th{text-align:left;padding-right:1rem;font-weight:600;color:#555}
td code{word-break:break-all}
"""


def _element(output: dict[str, Any], src: str) -> str:
    kind = output["type"]
    label = f"{kind} {output['index']}"
    # crossorigin="anonymous": the same markup works when the page and the gateway are on different origins
    # (the gateway answers CORS), and is harmless on the same origin.
    if kind == "image":
        return f'<img src="{src}" alt="{escape(label)}" crossorigin="anonymous" decoding="async">'
    if kind == "audio":
        return f'<audio controls preload="metadata" crossorigin="anonymous" src="{src}"></audio>'
    if kind == "video":
        return f'<video controls preload="metadata" playsinline crossorigin="anonymous" src="{src}"></video>'
    return f'<p><a href="{_download(src)}">download the {escape(kind)} file</a></p>'


def _download(src: str) -> str:
    """The download link of an (HTML-escaped) media URL, which may already carry a signature's query."""
    return src + ("&amp;download=1" if "?" in src else "?download=1")


def _facts(output: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("type", f"{output['type']} #{output['index']}"), ("MIME", str(output["mime"]))]
    if output.get("size_bytes") is not None:
        rows.append(("size", f"{output['size_bytes']:,} bytes"))
    if output.get("duration_seconds") is not None:
        rows.append(("duration", f"{output['duration_seconds']:.3f} s"))
    if output.get("width") and output.get("height"):
        rows.append(("dimensions", f"{output['width']} × {output['height']}"))
    if output.get("sha256"):
        rows.append(("sha256", str(output["sha256"])))
    return rows


def render_run_page(info: dict[str, Any], media_base: str = "", error: str | None = None) -> str:
    """The page for ``info`` (the ``/api/media/info`` document); media URLs are prefixed with ``media_base``."""
    run_id = escape(str(info["run_id"]))
    status = escape(str(info.get("status") or "unknown"))
    sections = []
    for output in info["outputs"]:
        src = escape(media_base.rstrip("/") + str(output["url"]), quote=True)
        rows = "".join(
            f"<tr><th>{escape(k)}</th><td>{'<code>' + escape(v) + '</code>' if k == 'sha256' else escape(v)}</td></tr>"
            for k, v in _facts(output)
        )
        sections.append(
            f'<section class="output" data-type="{escape(output["type"])}" data-index="{int(output["index"])}">'
            f"{_element(output, src)}"
            f'<table>{rows}<tr><th>file</th><td><a href="{src}">open</a> · '
            f'<a href="{_download(src)}">download</a></td></tr></table></section>'
        )
    body = "".join(sections) or "<p>No outputs yet.</p>"
    problem = f'<p class="error">{escape(error)}</p>' if error else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Run {run_id}</title><style>{_STYLE}</style></head><body>"
        f'<h1>Run <code>{run_id}</code></h1><p>Status: <span class="status status-{status}" id="status">{status}</span>'
        f"</p>{problem}{body}</body></html>"
    )
