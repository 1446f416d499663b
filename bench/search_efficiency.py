"""Section 2, search efficiency: LINAS vs NSGA-II vs random search at equal measured-evaluation budgets, over several
seeds, on the recipe's own super-network with its own search settings.

The searches run as one tailorfit recipe sharing the recipe's cache (so the super-network is not rebuilt, and a
killed bench resumes). A seed's three searches share one evaluation store: its baselines and the initial
population every algorithm starts from are measured once; every other point is a real measurement on the target.
Hypervolume is each search's own (pymoo), in the objective space normalised by that seed's FP32 baseline: once over
the candidates the search found (the curve), and once with the two unpruned baselines added, i.e. the front a user
picks from. Every algorithm gets the baselines for free, and on a model whose fully-INT8 baseline leads the front
the second number shows how little of it the search itself adds.
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
    histories = {a: [_history(result.outputs[f"search-{a}-seed{s}"].path) for s in seeds] for a in ALGORITHMS}
    curves = {a: [h["hypervolume_curve"] for h in runs] for a, runs in histories.items()}
    budget = min(len(c) for runs in curves.values() for c in runs)
    table = {a: _summary(runs, budget) for a, runs in curves.items()}
    with_baselines = {a: _spread([h["hypervolume_all"] for h in runs]) for a, runs in histories.items()}
    to_match = _evaluations_to_reach(curves["linas"], [c[budget - 1] for c in curves["nsga2"]])
    data = {"seeds": seeds, "budget": budget, "curves": curves, "summary": table, "with_baselines": with_baselines,
            "linas_evaluations_to_reach_nsga2_final": to_match, "initial": ctx.run.steps("search")[0].get("config", {}).get("initial")}
    plot = _plot(curves, budget, ctx.out_dir / "search_efficiency.png", initial=data["initial"])
    return Section(TITLE, _markdown(data), data, [plot], readme=_table(data))


def _history(search_dir: Path) -> dict[str, Any]:
    """The search's hypervolume after each of its measured candidates (the baselines are not among them) and, at the
    end, with the baselines added."""
    import json

    history = json.loads((search_dir / "history.json").read_text())
    return {"hypervolume_curve": [hv for _, hv in history["hypervolume_curve"]], "hypervolume_all": history["hypervolume_all"]}


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def _summary(runs: list[list[float]], budget: int) -> dict[str, Any]:
    marks = sorted({max(1, budget // 3), max(1, 2 * budget // 3), budget})
    return {m: _spread([r[m - 1] for r in runs]) for m in marks}


def _evaluations_to_reach(linas: list[list[float]], targets: list[float]) -> list[int | None]:
    """Per seed: the first measured evaluation at which LINAS's hypervolume reaches NSGA-II's final one (None: never)."""
    return [next((i + 1 for i, hv in enumerate(curve) if hv >= target - 1e-12), None) for curve, target in zip(linas, targets)]


def _plot(curves: dict[str, list[list[float]]], budget: int, path: Path, initial: int | None = None) -> Path:
    """Mean hypervolume per algorithm as a step curve; the spread over seeds as min–max bars at the table's marks
    (side by side, so the algorithms' spreads do not paint over one another); the shared initial candidates shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    x = np.arange(1, budget + 1)
    marks = sorted({max(1, budget // 3), max(1, 2 * budget // 3), budget})  # as in _summary, so the plot matches the table
    if initial:
        ax.axvspan(0.5, initial + 0.5, color="0.92", zorder=0)
        ax.text(initial / 2 + 0.5, 0.97, f"first {initial}: the same random\ncandidates for every algorithm", transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontsize=8, color="0.35")
    styles = {"linas": ("tab:blue", "-", "o"), "nsga2": ("tab:orange", "--", "s"), "random": ("tab:green", ":", "^")}
    for k, (algorithm, runs) in enumerate(curves.items()):
        color, line, marker = styles.get(algorithm, (None, "-", "o"))
        hv = np.array([r[:budget] for r in runs])
        mean = hv.mean(0)
        ax.step(np.append(x, budget + 0.6), np.append(mean, mean[-1]), where="post", color=color, ls=line, lw=2, label=f"{ALGORITHMS[algorithm]}", zorder=3)
        dodge = (k - (len(curves) - 1) / 2) * 0.35
        at = np.array(marks) - 1
        ax.errorbar(np.array(marks) + dodge, mean[at], yerr=[mean[at] - hv.min(0)[at], hv.max(0)[at] - mean[at]], fmt=marker, color=color,
                    ms=5, capsize=3, lw=1.2, zorder=4)
    ax.set_xlim(0.5, budget + 1)
    ax.set_ylim(bottom=0)
    ax.set_xticks(sorted({1, *marks, *([initial] if initial else [])}))
    ax.set(xlabel="measured candidates (the two baselines not counted)", ylabel="hypervolume (normalised by FP32)")
    ax.set_title(f"Hypervolume vs measured candidates: mean of {len(next(iter(curves.values())))} seeds; bars: min–max at the table's marks", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _table(data: dict[str, Any]) -> str:
    marks = list(next(iter(data["summary"].values())))
    def cell(s: dict[str, float]) -> str:
        return f"{s['mean']:.4f} ({s['min']:.4f}–{s['max']:.4f})"

    header = [f"HV @{m} (mean, min–max)" for m in marks] + [f"HV @{data['budget']} with the baselines"]
    lines = ["| algorithm | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for algorithm, summary in data["summary"].items():
        cells = [cell(s) for s in summary.values()] + [cell(data["with_baselines"][algorithm])]
        lines.append(f"| {ALGORITHMS[algorithm]} | " + " | ".join(cells) + " |")
    reach = data["linas_evaluations_to_reach_nsga2_final"]
    shown = ", ".join("never" if r is None else str(r) for r in reach)
    lines += ["", f"Measured candidates LINAS needed to reach NSGA-II's final hypervolume (at {data['budget']}), per seed: {shown}."]
    return "\n".join(lines)


def _markdown(data: dict[str, Any]) -> str:
    return "\n".join([
        f"{len(data['seeds'])} seeds × {len(ALGORITHMS)} algorithms, {data['budget']} measured candidates each; the unpruned FP32 / INT8 "
        f"baselines and the first {data['initial']} random candidates are measured once per seed and shared by every algorithm of that "
        "seed. Every evaluation is a real extract → lower → quantize → evaluate → time on the target. The curve and its marks count "
        "the search's own candidates; the last column adds the two baselines, which every algorithm gets for free.", "", _table(data), "", "![hypervolume vs evaluations](search_efficiency.png)",
    ])
