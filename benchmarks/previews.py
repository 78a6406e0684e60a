"""Scenario 2c, the cost of live previews: W watchers on R running runs (the 2b shape) whose samplers send
a preview at every step, against the same runs without previews, alternately, in the same run. The figure
is the latency of the non-preview events (backend progress frame sent -> watcher holding the event): a
preview stream must not delay them (goal: p99 within 20 % of the run without previews)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import Row, percentile
from benchmarks.stack import start_service, start_sim
from benchmarks.streams import latencies_ms, left_out, merge_errors, phased_workflows, submit_runs, watch_case

SCENARIO = "2c previews"


def _case(work: Path, name: str, sizes: dict[str, Any], previews: bool) -> dict[str, Any]:
    runs, steps, seconds = sizes["preview_runs"], sizes["preview_steps"], sizes["preview_seconds"]
    sim = start_sim(work, f"{name}-sim", parallel=runs + 10, stalled=True, previews=previews)
    service = start_service(work, f"{name}-service", sim.url, max_runs_in_flight=max(1000, runs + 10))
    try:
        run_ids = submit_runs([service.target], phased_workflows(runs, steps, seconds), live_previews=previews)
        spec = {"streams": sizes["preview_watchers"], "channels": 4, "runs": runs}
        spec.update(mode="watch", target=service.target, run_ids=run_ids)
        result = watch_case(work, name, [service.pid], spec, 2, sim.release, seconds * 6 + 180)
        frames = sim.frames()
    finally:
        service.stop()
        sim.stop()
    results = result["results"]
    return {
        "latency": latencies_ms(results, frames),
        "lost": sum(r["streams"] - r["terminal"] for r in results),
        "left_out": left_out(results, service.runs_dir),
        "previews": sum(r.get("previews", 0) for r in results),
        "errors": merge_errors(results),
        "load": result["window"].foreign_cores,
    }


def run(work: Path, sizes: dict[str, Any]) -> list[Row]:
    plain, shown = [], []
    for k in range(sizes["preview_repeats"]):  # alternately, so that a noisy moment hits both
        plain.append(_case(work, f"plain-{k}", sizes, previews=False))
        shown.append(_case(work, f"previews-{k}", sizes, previews=True))
    p99 = [percentile(c["latency"], 99) for c in shown]
    base = [percentile(c["latency"], 99) for c in plain]
    with_p99, without_p99 = statistics.median(p99), statistics.median(base)
    ratio = with_p99 / without_p99 if without_p99 else float("nan")
    case = (
        f"{sizes['preview_watchers']} watchers on {sizes['preview_runs']} runs x {sizes['preview_steps']} steps"
        f" / {sizes['preview_seconds']:g} s, a preview per step, median of {len(shown)}"
    )
    load = max(c["load"] for c in (*plain, *shown))
    lost = sum(c["lost"] for c in shown) + sum(c["lost"] for c in plain)
    coalesced = sum(c["left_out"][0] for c in (*shown, *plain))
    lost_events = sum(c["left_out"][1] for c in (*shown, *plain))
    errors = {k: v for c in (*plain, *shown) for k, v in c["errors"].items()}
    p50_with = statistics.median(percentile(c["latency"], 50) for c in shown)
    p50_without = statistics.median(percentile(c["latency"], 50) for c in plain)
    return [
        Row(
            SCENARIO,
            case,
            "non-preview event latency p99",
            with_p99,
            without_p99,
            "ms",
            "ratio <= 1.2",
            ratio <= 1.2,
            load,
            f"with previews {', '.join(f'{x:.0f}' for x in p99)}; without {', '.join(f'{x:.0f}' for x in base)}",
        ),
        Row(SCENARIO, case, "non-preview event latency p50", p50_with, p50_without, "ms", "", None, load, ""),
        Row(
            SCENARIO,
            case,
            "previews delivered",
            float(statistics.median(c["previews"] for c in shown)),
            None,
            "",
            "",
            None,
            load,
            "latest wins per watcher: a watcher that falls behind skips older ones",
        ),
        Row(
            SCENARIO,
            case,
            "streams lost / other events lost",
            float(lost + lost_events),
            None,
            "",
            "0",
            lost + lost_events == 0,
            load,
            f"progress coalesced {coalesced}, other events lost {lost_events}; errors: {errors or 'none'}",
        ),
    ]
