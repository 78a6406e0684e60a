"""The run page: HTML showing a run's status and playing every output; while the run goes on, a small
script (no framework, no build step) follows its server-sent events and updates the page: queue position,
current node, step bar, overall percentage, ETA, latest preview, and each output as it is stored. Without
the script the page is a complete snapshot."""

from __future__ import annotations

import json
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
#live{margin:.8rem 0}#live[hidden],#preview[hidden]{display:none}progress{width:100%}
#preview{max-width:16rem;display:block;margin-top:.6rem;background:#000}.error{color:#a00}
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


_SCRIPT = r"""
(() => {
  const body = document.body, $ = (id) => document.getElementById(id);
  const ended = ["completed", "failed", "cancelled"];
  if (!body.dataset.events || ended.includes(body.dataset.status)) return;
  const text = (id, value) => { $(id).textContent = value; };
  const status = (value) => {
    const el = $("status"); el.textContent = value; el.className = "status status-" + value;
    body.dataset.status = value;
  };
  const percent = (d) => {
    if (typeof d.overall === "number") text("overall", Math.round(d.overall * 100) + "% overall");
  };
  const eta = (d) => text("eta", d.estimate ? "ETA " + Math.max(0, Math.round(d.estimate.remaining)) + " s" : "");
  const element = (o) => {
    const tag = {image: "img", audio: "audio", video: "video"}[o.media_type];
    if (!tag) { const a = document.createElement("a"); a.href = o.url; a.textContent = "download"; return a; }
    const el = document.createElement(tag);
    el.crossOrigin = "anonymous"; el.src = o.url;
    if (tag !== "img") { el.controls = true; el.preload = "metadata"; }
    if (tag === "video") el.playsInline = true;
    if (tag === "img") el.alt = o.media_type + " " + o.index;
    return el;
  };
  const output = (o) => {
    if (document.querySelector(`section.output[data-type="${o.media_type}"][data-index="${o.index}"]`)) return;
    const section = document.createElement("section");
    section.className = "output"; section.dataset.type = o.media_type; section.dataset.index = o.index;
    section.append(element(o));
    const none = $("no-outputs"); if (none) none.remove();
    $("outputs").append(section);
  };
  const events = new EventSource(body.dataset.events);
  const on = (kind, handle) => events.addEventListener(kind, (m) => handle(JSON.parse(m.data)));
  $("live").hidden = false;
  on("accepted", () => status("accepted"));
  on("queued", (d) => { status("queued"); text("position", "position " + d.position + " in the queue"); eta(d); });
  on("started", (d) => { status("running"); text("position", ""); eta(d); });
  on("node_started", (d) => {
    text("node", (d.title || d.class_type) + " (node " + d.node_id + ")");
    $("steps").value = 0; percent(d); eta(d);
  });
  on("node_progress", (d) => { $("steps").max = d.max || 1; $("steps").value = d.value; percent(d); eta(d); });
  on("preview", (d) => { $("preview").src = d.url; $("preview").hidden = false; });
  on("output_ready", output);
  const end = (kind, why) => {
    status(kind); events.close(); text("node", ""); text("eta", "");
    if (kind === "completed") text("overall", "100% overall");
    if (why) { $("reason").textContent = why; $("reason").hidden = false; }
  };
  on("completed", (d) => { d.outputs.forEach(output); end("completed", ""); });
  on("failed", (d) => end("failed", d.message));
  on("cancelled", (d) => end("cancelled", "cancelled: " + d.reason));
})();
"""


def _details(record: dict[str, Any]) -> str:
    rows = []
    if record.get("template"):
        rows.append(("template", str(record["template"])))
    for name, value in (record.get("params") or {}).items():
        rows.append((f"parameter {name}", json.dumps(value, ensure_ascii=False)))
    timings = record.get("timings") or {}
    if timings.get("queue_wait_s") is not None:
        rows.append(("queue wait", f"{timings['queue_wait_s']:.2f} s"))
    if timings.get("execution_s") is not None:
        rows.append(("execution", f"{timings['execution_s']:.2f} s"))
    if not rows:
        return ""
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table id="details">{cells}</table>'


def render_run_page(
    info: dict[str, Any],
    media_base: str = "",
    error: str | None = None,
    events_url: str = "",
    record: dict[str, Any] | None = None,
) -> str:
    """The page for ``info`` (the ``/api/media/info`` document); media URLs are prefixed with ``media_base``.
    With ``events_url`` (the run's server-sent events), the page follows the run live until it ends;
    ``record`` gives the template, parameters and timings shown."""
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
    body = "".join(sections) or '<p id="no-outputs">No outputs yet.</p>'
    problem = (
        f'<p class="error" id="reason">{escape(error)}</p>' if error else '<p class="error" id="reason" hidden></p>'
    )
    live = (
        '<div id="live" hidden><span id="position"></span> <span id="node"></span>'
        '<progress id="steps" value="0" max="1"></progress><span id="overall"></span> <span id="eta"></span>'
        '<img id="preview" alt="latest preview" hidden></div>'
    )
    attrs = f' data-status="{status}"' + (f' data-events="{escape(events_url, quote=True)}"' if events_url else "")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Run {run_id}</title><style>{_STYLE}</style></head><body{attrs}>"
        f'<h1>Run <code>{run_id}</code></h1><p>Status: <span class="status status-{status}" id="status">{status}</span>'
        f'</p>{problem}{live}{_details(record or {})}<div id="outputs">{body}</div>'
        f"<script>{_SCRIPT}</script></body></html>"
    )
