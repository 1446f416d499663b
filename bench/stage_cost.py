"""Section 4, cost and scaling: wall time and peak memory of each pipeline stage of the recipe, what one searched
candidate costs stage by stage, and how search wall time grows with the measured-evaluation budget and with model
size (bench/search_scaling.py).

Stage costs are what producing each cache entry cost (the runner keeps ``cost.json`` beside every entry it writes),
so a cached run still reports them; entries older than that record say so. The budget curve is measured, not
modelled: the cumulative seconds of the search's candidates in the order they were measured.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tailorfit.pipeline.search.store import EvaluationStore

from .context import BenchContext
from .search_scaling import measure_search_scaling
from .sections import Section

TITLE = "Cost and scaling"
_BUDGET_MARKS = (5, 10, 15, 20, 25, 30, 40, 50)


def run(ctx: BenchContext) -> Section:
    stages = _stages(ctx)
    searches = {sid: _search_cost(ctx, sid) for sid in (s.get("id", "search") for s in ctx.run.steps("search")) if sid in ctx.run.outputs}
    scaling = measure_search_scaling(ctx.run, ctx.root, ctx.settings.scaling_budget)
    data = {"stages": stages, "searches": searches, "model_size_scaling": scaling}
    markdown = _markdown(stages, searches) + "\n\n" + _scaling_table(scaling)
    return Section(TITLE, markdown, data, readme=_stage_table(stages) + "\n\n" + _scaling_table(scaling))


def _stages(ctx: BenchContext) -> list[dict[str, Any]]:
    rows = []
    for sid, step in ctx.run.manifest["steps"].items():
        produced = step.get("produced") or {}
        rows.append({"step": sid, "pass": step["pass"], "skipped": step.get("skipped"),
                     "seconds": produced.get("seconds"), "peak_rss_mb": produced.get("peak_rss_mb")})
    return rows


def _search_cost(ctx: BenchContext, sid: str) -> dict[str, Any]:
    result = ctx.run.outputs[sid]
    store = EvaluationStore(result.path / "evaluations.sqlite", layout=None)
    try:
        records = list(store.records())
    finally:
        store.close()
    searched = [r for r in records if r["role"] == "search"]
    by_stage: dict[str, list[float]] = {}
    for r in records:
        for stage, seconds in r["metrics"].get("seconds_by_stage", {}).items():
            by_stage.setdefault(stage, []).append(seconds)
    cumulative = np.cumsum([r["seconds"] for r in searched]).tolist()
    marks = [b for b in _BUDGET_MARKS if b <= len(cumulative)] + ([len(cumulative)] if len(cumulative) not in _BUDGET_MARKS else [])
    return {
        "candidates": len(searched), "baselines": len(records) - len(searched),
        "seconds_per_candidate": float(np.median([r["seconds"] for r in records])) if records else None,
        "median_seconds_by_stage": {k: float(np.median(v)) for k, v in by_stage.items()},
        "wall_seconds_at_budget": {b: cumulative[b - 1] for b in marks},
    }


def _fmt(value: float | None, unit: str = "") -> str:
    return "not recorded" if value is None else f"{value:,.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}"


def _stage_table(stages: list[dict[str, Any]]) -> str:
    lines = ["| step | pass | wall time | peak memory (process + children) |", "|---|---|---:|---:|"]
    for s in stages:
        if s["skipped"]:
            lines.append(f"| {s['step']} | {s['pass']} | skipped | — |")
        else:
            lines.append(f"| {s['step']} | {s['pass']} | {_fmt(s['seconds'], ' s')} | {_fmt(s['peak_rss_mb'], ' MB')} |")
    known = [s["seconds"] for s in stages if s["seconds"] is not None]
    lines.append(f"| **all recorded** | | **{_fmt(sum(known), ' s')}** | **{_fmt(max((s['peak_rss_mb'] or 0) for s in stages) or None, ' MB')}** |")
    return "\n".join(lines)


def _markdown(stages: list[dict[str, Any]], searches: dict[str, dict[str, Any]]) -> str:
    parts = ["What producing each step's output cost on this machine (the run that wrote its cache entry; "
             "\"not recorded\": the entry predates cost records — delete it from the cache to measure it).", "", _stage_table(stages)]
    for sid, s in searches.items():
        stage = ", ".join(f"{k} {v:.1f} s" for k, v in s["median_seconds_by_stage"].items())
        budget = " · ".join(f"{b}: {v / 60:.1f} min" for b, v in s["wall_seconds_at_budget"].items())
        parts += ["", f"**Search `{sid}`**: {s['candidates']} candidates and {s['baselines']} baselines measured; "
                  f"median {_fmt(s['seconds_per_candidate'], ' s')} per candidate ({stage}).", "",
                  f"Candidate wall time by measured-evaluation budget (cumulative, in measurement order): {budget}. "
                  "It grows linearly with the budget: every evaluation is a real extract, lower, quantize, evaluate and time."]
    return "\n".join(parts)


def _scaling_table(scaling: dict[str, Any]) -> str:
    models = scaling["models"]
    first = next(iter(models.values()))
    lines = [f"Search cost vs model size ({scaling['budget']} random candidates each, the recipe's search settings):", "",
             "| model | layers × hidden (FFN) | params | median s / candidate | by stage (median s) | ratio | projected search at budget "
             f"{scaling['recipe_budget']} |", "|---|---|---:|---:|---|---:|---:|"]
    for name, m in models.items():
        stages = ", ".join(f"{k} {v:.1f}" for k, v in m["median_seconds_by_stage"].items())
        projected = "—" if m["projected_search_seconds"] is None else f"{m['projected_search_seconds'] / 60:.0f} min"
        lines.append(f"| {name} | {m['layers']} × {m['hidden']} ({m['ffn']}) | {m['params'] / 1e6:.1f} M | {m['median_seconds_per_candidate']:.1f} | "
                     f"{stages} | {m['median_seconds_per_candidate'] / first['median_seconds_per_candidate']:.2f}x | {projected} |")
    return "\n".join(lines)
