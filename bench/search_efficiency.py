"""Section 2, search efficiency: LINAS vs NSGA-II vs random search at equal measured-evaluation budgets, over several
seeds, on the recipe's own super-network with its own search settings.

The searches run as one tailorfit recipe sharing the recipe's cache (so the super-network is not rebuilt, and a
killed bench resumes). A seed's three searches share one evaluation store: its baselines and the initial
population every algorithm starts from are measured once; every other point is a real measurement on the target.
Hypervolume is each search's own (pymoo), in the objective space normalised by that seed's FP32 baseline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tailorfit.pipeline import run_pipeline

from .context import BenchContext
from .sections import Section

TITLE = "Search efficiency"
ALGORITHMS = {"linas": "LINAS (predictors + NSGA-II)", "nsga2": "NSGA-II", "random": "random"}


def comparison_recipe(run: Any, seeds: list[int], stores: Path) -> dict[str, Any]:
    """The recipe's steps up to its super-network, then one search per (algorithm, seed) with the recipe's search settings."""
    upstream = [s for s in run.raw["steps"] if s["pass"] in ("load", "dataset", "finetune", "supernet", "supernet-finetune")]
    supernet = [s.get("id", s["pass"]) for s in upstream if s["pass"].startswith("supernet")][-1]
    config = dict(run.steps("search")[0].get("config", {}))
    steps = list(upstream)
    for seed in seeds:
        for algorithm in ALGORITHMS:
            steps.append({"id": f"search-{algorithm}-seed{seed}", "pass": "search", "inputs": {"supernet": supernet, "data": run.step_id("dataset")},
                          "config": {**config, "algorithm": algorithm, "seed": seed, "store": str((stores / f"seed{seed}.sqlite").resolve())}})
    return {"name": f"{run.name}-search-efficiency", "seed": run.seed, "threads": run.threads, "steps": steps}


def run(ctx: BenchContext) -> Section:
    seeds = list(range(ctx.settings.search_seeds))
    # one folder per recipe: a store answers only searches of the super-network it measured (the quick and the
    # full recipe used to share one, and the full comparison was answered with the quick model's numbers)
    stores = ctx.root / f"{ctx.run.name}-search-efficiency" / "stores"
    stores.mkdir(parents=True, exist_ok=True)
    result = run_pipeline(comparison_recipe(ctx.run, seeds, stores), out=ctx.root, cache_dir=ctx.run.cache.root, quiet=False)
    curves = {a: [_curve(result.outputs[f"search-{a}-seed{s}"].path) for s in seeds] for a in ALGORITHMS}
    budget = min(len(c) for runs in curves.values() for c in runs)
    table = {a: _summary(runs, budget) for a, runs in curves.items()}
    to_match = _evaluations_to_reach(curves["linas"], [c[budget - 1] for c in curves["nsga2"]])
    data = {"seeds": seeds, "budget": budget, "curves": curves, "summary": table, "linas_evaluations_to_reach_nsga2_final": to_match,
            "initial": ctx.run.steps("search")[0].get("config", {}).get("initial")}
    plot = _plot(curves, budget, ctx.out_dir / "search_efficiency.png")
    return Section(TITLE, _markdown(data), data, [plot], readme=_table(data))


def _curve(search_dir: Path) -> list[float]:
    """Hypervolume after each measured evaluation (1-based positions filled forward)."""
    import json

    history = json.loads((search_dir / "history.json").read_text())
    points = dict(history["hypervolume_curve"])
    out, last = [], 0.0
    for n in range(1, history["measured"] + 1):
        last = points.get(n, last)
        out.append(last)
    return out


def _summary(runs: list[list[float]], budget: int) -> dict[str, Any]:
    marks = sorted({max(1, budget // 3), max(1, 2 * budget // 3), budget})
    at = {m: [r[m - 1] for r in runs] for m in marks}
    return {m: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))} for m, v in at.items()}


def _evaluations_to_reach(linas: list[list[float]], targets: list[float]) -> list[int | None]:
    """Per seed: the first measured evaluation at which LINAS's hypervolume reaches NSGA-II's final one (None: never)."""
    return [next((i + 1 for i, hv in enumerate(curve) if hv >= target - 1e-12), None) for curve, target in zip(linas, targets)]


def _plot(curves: dict[str, list[list[float]]], budget: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    x = np.arange(1, budget + 1)
    for algorithm, runs in curves.items():
        hv = np.array([r[:budget] for r in runs])
        ax.plot(x, hv.mean(0), label=f"{ALGORITHMS[algorithm]} (mean of {len(runs)} seeds)")
        ax.fill_between(x, hv.min(0), hv.max(0), alpha=0.2)
    ax.set(xlabel="measured evaluations", ylabel="hypervolume (normalised by FP32)", title="Hypervolume vs measured evaluations (band: min–max over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _table(data: dict[str, Any]) -> str:
    marks = list(next(iter(data["summary"].values())))
    lines = ["| algorithm | " + " | ".join(f"HV @{m} (mean, min–max)" for m in marks) + " |", "|---|" + "---:|" * len(marks)]
    for algorithm, summary in data["summary"].items():
        cells = [f"{s['mean']:.4f} ({s['min']:.4f}–{s['max']:.4f})" for s in summary.values()]
        lines.append(f"| {ALGORITHMS[algorithm]} | " + " | ".join(cells) + " |")
    reach = data["linas_evaluations_to_reach_nsga2_final"]
    shown = ", ".join("never" if r is None else str(r) for r in reach)
    lines += ["", f"Measured evaluations LINAS needed to reach NSGA-II's final hypervolume (at {data['budget']}), per seed: {shown}."]
    return "\n".join(lines)


def _markdown(data: dict[str, Any]) -> str:
    return "\n".join([
        f"{len(data['seeds'])} seeds × {len(ALGORITHMS)} algorithms, {data['budget']} measured evaluations each, counting the unpruned "
        f"FP32 / INT8 baselines; those and the first {data['initial']} random candidates are measured once per seed and shared by every "
        "algorithm of that seed. Every evaluation is a real extract → lower → quantize → "
        "evaluate → time on the target.", "", _table(data), "", "![hypervolume vs evaluations](search_efficiency.png)",
    ])
