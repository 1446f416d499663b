"""What a search writes: objective vectors from stored metrics, the Pareto front, hypervolume, predictor quality
(and the quality of the columns' own estimates, such as the latency table's), the cheap accuracy estimate's rank
agreement with the target, and the plots (PNG for reports, HTML to explore).

Objectives are normalised by the unpruned FP32 baseline measured in the same search (accuracy as
``-accuracy / baseline``, costs as ``value / baseline``), so the hypervolume reads as a fraction of the
box between the reference point — ``hv_accuracy_margin`` points below the baseline's accuracy, the
baseline's own costs — and the ideal. Candidates slower or bigger than the FP32 model add nothing.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from scipy.stats import kendalltau

from tailorfit.pipeline.cache import write_json_atomic
from tailorfit.pipeline.search.multiobjective import SearchHistory, prediction_quality, hypervolume, hypervolume_curve, pareto_mask
from tailorfit.pipeline.search.stats import paired_difference

# objective -> stored metric (accuracy's metric depends on ``accuracy_from``)
OBJECTIVES = {"accuracy": "accuracy", "latency": "latency_ms", "size": "size_mb", "params": "params", "macs": "macs", "non_embedding_params": "non_embedding_params"}
_BULKY = ("correct", "estimate_correct")  # per-example strings: in the store, not in reports


def accuracy_metric(config: Any) -> str:
    return "accuracy" if config.accuracy_from == "target" else "accuracy_estimate"


def _metric(objective: str, config: Any) -> str:
    return accuracy_metric(config) if objective == "accuracy" else OBJECTIVES[objective]


def objective_matrix(records: list[dict[str, Any]], config: Any, fp32: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(F, G) for pymoo: normalised objectives to minimise and constraints (feasible when <= 0)."""
    F, G = [], []
    acc = accuracy_metric(config)
    for r in records:
        m, base = r["metrics"], fp32["metrics"]
        # latency is already relative to the unpruned FP32 model: measured interleaved with it
        F.append([m["latency_ratio"] if o == "latency" else (-1 if o == "accuracy" else 1) * m[_metric(o, config)] / base[_metric(o, config)]
                  for o in config.objectives])
        g = []
        if config.max_accuracy_drop is not None:
            g.append(100 * (base[acc] - m[acc]) - config.max_accuracy_drop)
        if config.max_latency_ms is not None:
            g.append(m["latency_ms"] - config.max_latency_ms)
        if config.max_size_mb is not None:
            g.append(m["size_mb"] - config.max_size_mb)
        G.append(g)
    return np.array(F, dtype=float), np.array(G, dtype=float).reshape(len(records), -1)


def reference_point(config: Any, fp32: dict[str, Any]) -> np.ndarray:
    acc = fp32["metrics"][accuracy_metric(config)]
    return np.array([-(acc - config.hv_accuracy_margin / 100) / acc if o == "accuracy" else 1.0 for o in config.objectives])


def _row(record: dict[str, Any], fp32: dict[str, Any], config: Any) -> dict[str, Any]:
    m = record["metrics"]
    row = {k: record[k] for k in ("id", "role", "subnet", "policy")}
    row["metrics"] = {k: v for k, v in m.items() if k not in _BULKY}
    for key, name in (("correct", "accuracy_change_vs_fp32"), ("estimate_correct", "estimate_change_vs_fp32")):
        if key not in m:  # a search run without the estimate
            continue
        mine, base = np.array(list(m[key]), dtype=float), np.array(list(fp32["metrics"][key]), dtype=float)
        row["metrics"][name] = paired_difference(mine, base)
    return row


def write_report(folder: Path, history: SearchHistory, store: Any, config: Any, baselines: dict[str, dict[str, Any]], final: bool,
                 estimates: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None) -> dict[str, Any]:
    """Writes history.json after every iteration; the front, rank agreement and plots when ``final``, with each
    column estimate's (``IntegerProblem.estimates``) MAPE and Kendall tau over every candidate the search measured."""
    fp32 = baselines["fp32"]
    ref = reference_point(config, fp32)
    curve = hypervolume_curve(history, ref)
    hv = curve[-1][1] if curve else 0.0
    summary = {
        "objectives": config.objectives, "accuracy_from": config.accuracy_from, "algorithm": config.algorithm, "budget": config.budget,
        "reference_point": ref.tolist(), "hypervolume": hv, "hypervolume_curve": curve,
        "iterations": [{"index": it.index, "measured": it.measured, "new": it.new, "predictors": it.predictors, "estimates": it.estimates}
                       for it in history.iterations],
    }
    write_json_atomic(folder / "history.json", summary)
    if not final:
        return summary
    # this search's candidates and the baselines: a shared or warm-start store may hold other searches' too
    mine = {tuple(int(v) for v in row) for row in history.X}
    records = [r for r in store.records() if r["role"] == "baseline" or tuple(r["genome"]) in mine]
    F, G = objective_matrix(records, config, fp32)
    front = [_row(r, fp32, config) for r, on in zip(records, pareto_mask(F, G)) if on]
    front.sort(key=lambda r: r["metrics"]["latency_ratio"])
    write_json_atomic(folder / "pareto.json", front)
    _write_csv(folder / "pareto.csv", front)
    agreement = _rank_agreement(records, front)
    write_json_atomic(folder / "estimate_vs_target.json", agreement)
    summary.update(front=front, hypervolume_all=hypervolume(F, ref, G), estimate_vs_target=agreement, measured=len(records),
                   column_estimates=_column_estimates(history, estimates or {}))
    write_json_atomic(folder / "history.json", {k: v for k, v in summary.items() if k != "front"})
    _plots(folder, records, front, baselines, curve, config)
    return summary


def _column_estimates(history: SearchHistory, estimates: Mapping[str, Callable[[np.ndarray], np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Per column with an estimate: its MAPE and Kendall tau against everything this search measured."""
    Y, out = np.hstack([history.F, history.G]), {}
    columns = [f"f{i}" for i in range(history.F.shape[1])] + [f"g{j}" for j in range(history.G.shape[1])]
    for c, name in enumerate(columns):
        if name in estimates and len(history.X):
            mape, tau = prediction_quality(np.asarray(estimates[name](history.X), float), Y[:, c])
            out[name] = {"mape": mape, "kendall_tau": tau, "candidates": len(history.X)}
    return out


def _write_csv(path: Path, front: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "layers", "heads", "ffn", "int8_groups", "accuracy", "accuracy_estimate", "change_vs_fp32_pts", "ci_low", "ci_high",
                      "latency_ratio_vs_fp32", "latency_ms", "size_mb", "params", "macs"])
        for r in front:
            m, kept = r["metrics"], [c for c in r["subnet"]["layers"] if c["keep"]]
            change = m["accuracy_change_vs_fp32"]
            out.writerow([r["id"], len(kept), "/".join(str(c["heads"]) for c in kept), "/".join(str(c["ffn"]) for c in kept),
                          sum(v == "int8" for v in r["policy"]["layers"].values()), f"{m['accuracy']:.4f}", f"{m['accuracy_estimate']:.4f}" if "accuracy_estimate" in m else "",
                          f"{100 * change['difference']:.2f}", f"{100 * change['ci_low']:.2f}", f"{100 * change['ci_high']:.2f}",
                          f"{m['latency_ratio']:.4f}", f"{m['latency_ms']:.3f}", f"{m['size_mb']:.2f}", m["params"], m["macs"]])


def _rank_agreement(records: list[dict[str, Any]], front: list[dict[str, Any]]) -> dict[str, Any]:
    """Kendall tau between the cheap estimate (PyTorch, fake-quantized) and the target-measured accuracy."""
    if any("accuracy_estimate" not in r["metrics"] for r in records):
        return {"kendall_tau": None, "candidates": len(records), "front_size": len(front), "skipped": "the search ran without the estimate (estimate: false)"}
    est = [r["metrics"]["accuracy_estimate"] for r in records]
    real = [r["metrics"]["accuracy"] for r in records]
    tau = kendalltau(est, real)
    gap = np.abs(np.array(est) - np.array(real))
    defined = bool(np.isfinite(tau.statistic))  # undefined when either side is constant
    return {"kendall_tau": float(tau.statistic) if defined else None, "p_value": float(tau.pvalue) if defined else None, "candidates": len(records),
            "mean_abs_gap_pts": float(100 * gap.mean()), "max_abs_gap_pts": float(100 * gap.max()), "front_size": len(front)}


def _plots(folder: Path, records: list[dict[str, Any]], front: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], curve: list, config: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    acc = accuracy_metric(config)
    xs = lambda rows: [r["metrics"]["latency_ratio"] for r in rows]  # noqa: E731
    ys = lambda rows: [100 * r["metrics"][acc] for r in rows]  # noqa: E731
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(xs(records), ys(records), s=14, c="#bbbbbb", label="measured")
    ax.plot(xs(front), ys(front), "o-", c="#1f77b4", label="Pareto front")
    for name, b in baselines.items():
        ax.scatter(xs([b]), ys([b]), marker="*", s=160, label=f"unpruned {name.upper()}")
    ax.set_xlabel(f"latency / unpruned FP32 latency on {config.target} (interleaved; batch 1, {config.sequence_length} tokens)")
    ax.set_ylabel(f"validation accuracy, % ({config.accuracy_from})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "pareto.png", dpi=120)
    plt.close(fig)
    hover = lambda rows: [f"{r['id']} ({r['role']})<br>{sum(c['keep'] for c in r['subnet']['layers'])} layers, {sum(v == 'int8' for v in r['policy']['layers'].values())} int8 groups<br>{r['metrics']['latency_ms']:.2f} ms, {r['metrics']['size_mb']:.1f} MB" for r in rows]  # noqa: E731
    html = go.Figure()
    html.add_scatter(x=xs(records), y=ys(records), mode="markers", name="measured", text=hover(records), marker={"color": "#bbbbbb"})
    html.add_scatter(x=xs(front), y=ys(front), mode="lines+markers", name="Pareto front", text=hover(front))
    for name, b in baselines.items():
        html.add_scatter(x=xs([b]), y=ys([b]), mode="markers", name=f"unpruned {name.upper()}", marker={"symbol": "star", "size": 14}, text=hover([b]))
    html.update_layout(xaxis_title=f"latency / unpruned FP32 latency on {config.target} (interleaved)", yaxis_title=f"validation accuracy, % ({config.accuracy_from})")
    html.write_html(folder / "pareto.html", include_plotlyjs="directory")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([n for n, _ in curve], [h for _, h in curve], "-")
    ax.set_xlabel("measured evaluations")
    ax.set_ylabel("hypervolume (normalised to the FP32 baseline)")
    fig.tight_layout()
    fig.savefig(folder / "hypervolume.png", dpi=120)
    plt.close(fig)
    hv = go.Figure(go.Scatter(x=[n for n, _ in curve], y=[h for _, h in curve], mode="lines"))
    hv.update_layout(xaxis_title="measured evaluations", yaxis_title="hypervolume")
    hv.write_html(folder / "hypervolume.html", include_plotlyjs="directory")
