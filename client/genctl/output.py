"""What genctl prints: live progress (rich) and tables for people, JSON for scripts."""

from __future__ import annotations

import json
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from comfygen.v1 import generation_pb2 as pb
from generation_client import event_kind, event_to_dict, message_to_dict
from generation_client.dicts import param_to_plain, short_enum_name


def print_json(data: Any, out: TextIO) -> None:
    print(json.dumps(data), file=out, flush=True)


def running_text(overall: float, progress: pb.NodeProgress) -> str:
    """``running 42% · ETA 12s``: the service's overall fraction, and its estimate when it has one."""
    text = f"running {overall:.0%}"
    if progress.HasField("estimate"):
        text += f" · ETA {progress.estimate.remaining.ToTimedelta().total_seconds():.0f}s"
    return text


class ProgressView:
    """Human output of a run: an overall bar across the workflow's nodes and one for the node running
    (percentage, elapsed time), redrawn in place on a terminal, plain lines otherwise; the output URLs
    go to ``out``."""

    def __init__(self, err: TextIO, out: TextIO, nodes: int = 0) -> None:
        self.console = Console(file=err, highlight=False)
        self.out = out
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.nodes = nodes
        self.overall: TaskID | None = None  # the bars appear with the first event: none when the call fails
        self.node: TaskID | None = None
        self.done: set[str] = set()

    def show(self, event: pb.RunEvent) -> None:
        kind = event_kind(event)
        if self.overall is None:
            self.progress.start()
            self.overall = self.progress.add_task("run", total=self.nodes or None)
        if kind == "accepted":
            self.console.print(f"run {event.run_id} accepted (prompt {event.accepted.prompt_id})")
        elif kind == "queued":
            self.progress.update(self.overall, description=f"queued, {event.queued.position} ahead")
        elif kind == "started":
            self.progress.update(self.overall, description="running")
        elif kind == "nodes_cached":
            self._finish_nodes(event.nodes_cached.node_ids)
        elif kind == "node_started":
            node = event.node_started
            self._finish_node()
            name = f"node {node.node_id} {node.title or node.class_type}"
            self.node = self.progress.add_task(name, total=None)
            self.current = node.node_id
        elif kind == "node_progress" and self.node is not None:
            p = event.node_progress
            self.progress.update(self.node, completed=p.value, total=p.max or None)
            self.progress.update(self.overall, description=running_text(p.overall, p))
        elif kind == "output_ready":
            o = event.output_ready.output
            self.console.print(f"output {o.filename} ({o.mime}, {o.size_bytes} bytes)")
        elif kind in ("completed", "failed", "cancelled"):
            self._end(event, kind)

    def _finish_node(self) -> None:
        if self.node is not None:
            task = self.progress.tasks[self.node]
            self.progress.update(self.node, completed=task.total or 1, total=task.total or 1)
            self._finish_nodes([self.current])
            self.node = None

    def _finish_nodes(self, node_ids: Any) -> None:
        self.done.update(node_ids)
        if self.overall is not None:
            self.progress.update(self.overall, completed=len(self.done))

    def _end(self, event: pb.RunEvent, kind: str) -> None:
        self._finish_node()
        total = self.progress.tasks[self.overall].total if self.overall is not None else None
        if kind == "completed" and total and self.overall is not None:
            self.progress.update(self.overall, completed=total)
        self.progress.stop()
        if kind == "completed":
            c = event.completed
            self.console.print(
                f"completed in {c.execution.ToTimedelta().total_seconds():.2f} s "
                f"(queued {c.queue_wait.ToTimedelta().total_seconds():.2f} s)"
            )
            for o in c.outputs:
                print(o.url, file=self.out, flush=True)
        elif kind == "failed":
            f = event.failed
            where = f" in node {f.node_id} ({f.node_type})" if f.node_id else ""
            self.console.print(f"FAILED{where}: {f.message}")
        else:
            self.console.print(f"cancelled: {event.cancelled.reason}")

    def close(self) -> None:
        if self.overall is not None:
            self.progress.stop()


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column)
    return table


def runs_table(runs: list[pb.Run]) -> Table:
    table = _table("RUN", "STATUS", "CREATED", "WORKFLOW / TEMPLATE", "OUTPUTS")
    for run in runs:
        data = message_to_dict(run)
        table.add_row(
            run.run_id,
            data["status"],
            data.get("created", ""),
            run.template or run.workflow_name,
            str(len(run.outputs)),
        )
    return table


def run_table(run: pb.Run) -> Table:
    data = message_to_dict(run)
    table = _table("FIELD", "VALUE")
    for key in (
        "run_id",
        "status",
        "template",
        "workflow_name",
        "backend",
        "created",
        "finished",
        "queue_wait",
        "execution",
        "cancel_reason",
        "request_id",
    ):
        if data.get(key) not in (None, ""):
            table.add_row(key, str(data[key]))
    for name, value in data.get("params", {}).items():
        table.add_row(f"param {name}", json.dumps(value))
    if run.HasField("failure"):
        table.add_row("failure", f"{data['failure']['code']}: {run.failure.message}")
    for o in run.outputs:
        table.add_row(f"output {short_enum_name(pb.MediaType.DESCRIPTOR, o.media_type)} {o.index}", o.url)
    return table


def templates_table(templates: list[pb.Template]) -> Table:
    table = _table("TEMPLATE", "MEDIA", "DESCRIPTION")
    for t in templates:
        table.add_row(t.name, short_enum_name(pb.MediaType.DESCRIPTOR, t.media), t.description)
    return table


def template_table(template: pb.Template) -> Table:
    table = _table("PARAMETER", "TYPE", "DEFAULT", "BOUNDS", "DESCRIPTION")
    for p in template.parameters:
        default = "(required)" if p.required else json.dumps(param_to_plain(p.default_value))
        bounds = []
        if p.HasField("min") or p.HasField("max"):
            bounds.append(f"{p.min:g}..{p.max:g}" if p.HasField("min") and p.HasField("max") else "")
        if p.choices:
            bounds.append(" | ".join(str(param_to_plain(c)) for c in p.choices))
        if p.HasField("max_length"):
            bounds.append(f"<= {p.max_length} chars")
        kind = short_enum_name(pb.ParameterType.DESCRIPTOR, p.type)
        table.add_row(p.name, kind, default, " ".join(b for b in bounds if b), p.description)
    return table


def backends_table(backends: list[pb.Backend]) -> Table:
    table = _table("NAME", "STATE", "QUEUE", "HERE", "NODES", "URL / LAST ERROR")
    for b in backends:
        where = b.url + (f"  [{b.last_error}]" if b.last_error else "")
        table.add_row(
            b.name, "up" if b.up else "down", str(b.queue_length), str(b.runs_in_flight), str(b.node_class_count), where
        )
    return table


__all__ = ["ProgressView", "event_to_dict", "print_json"]
