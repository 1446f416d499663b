"""Confidence intervals for measured metrics: bootstrap over examples, paired when two models are compared."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tailorfit.pipeline.models.regression import pearson


def bootstrap_ci(values: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over per-example ``values``."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    stats = np.array([statistic(values[i]) for i in idx])
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` on the same examples with its bootstrap interval (e.g. accuracy drop vs a baseline)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    low, high = bootstrap_ci(diff, resamples=resamples, level=level, seed=seed)
    return {"difference": float(diff.mean()), "ci_low": low, "ci_high": high, "n": int(len(diff))}


def correct_by_id(path: str | Path) -> dict[Any, int]:
    """Per example id, 1 when the model was right, from an evaluate step's predictions report: the rows paired
    comparisons are made on."""
    with open(path) as f:
        return {r["id"]: r["correct"] for r in map(json.loads, f)}


def paired_change(predictions: str | Path, reference: str | Path, seed: int = 0) -> dict[str, float]:
    """The accuracy change of one evaluate report against another on the examples both hold (``paired_difference``)."""
    return _on_shared_ids(correct_by_id(predictions), correct_by_id(reference), seed)


def _on_shared_ids(mine: dict[Any, float], theirs: dict[Any, float], seed: int) -> dict[str, float]:
    ids = sorted(set(mine) & set(theirs))
    return paired_difference(np.array([mine[i] for i in ids]), np.array([theirs[i] for i in ids]), seed=seed)


def paired_pearson_change(predictions: str | Path, reference: str | Path, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Pearson's r of one regression evaluate report minus another's, on the rows both hold, with the bootstrap
    interval of that difference (rows resampled together, so both models are scored on each resample's rows)."""
    def read(path: str | Path) -> dict[Any, tuple[float, float]]:
        with open(path) as f:
            return {r["id"]: (r["prediction"], r["label"]) for r in map(json.loads, f)}

    mine, theirs = read(predictions), read(reference)
    ids = sorted(set(mine) & set(theirs))
    a, b, y = (np.array(v) for v in zip(*[(mine[i][0], theirs[i][0], mine[i][1]) for i in ids]))

    def change(rows: np.ndarray) -> float:
        return pearson(a[rows], y[rows]) - pearson(b[rows], y[rows])

    low, high = bootstrap_ci(np.arange(len(ids)), statistic=change, resamples=resamples, seed=seed)
    return {"difference": change(np.arange(len(ids))), "ci_low": low, "ci_high": high, "n": len(ids)}


def format_change(d: dict[str, float]) -> str:
    """A paired accuracy change in points with its interval: "+0.35 (-0.47…+1.17)"."""
    return f"{100 * d['difference']:+.2f} ({100 * d['ci_low']:+.2f}…{100 * d['ci_high']:+.2f})"


def paired_perplexity_ratio(predictions: str | Path, reference: str | Path, seed: int = 0) -> dict[str, float]:
    """Perplexity of one causal-LM evaluate report over another's on the windows both hold: exp of the mean per-window
    difference in mean token NLL, with its bootstrap interval (windows have equal length, so this is the ratio of the
    two perplexities on those windows)."""
    def nll(path: str | Path) -> dict[Any, float]:
        with open(path) as f:
            return {r["id"]: r["nll_sum"] / r["tokens"] for r in map(json.loads, f)}

    d = _on_shared_ids(nll(predictions), nll(reference), seed)
    return {"ratio": float(np.exp(d["difference"])), "ci_low": float(np.exp(d["ci_low"])), "ci_high": float(np.exp(d["ci_high"])), "n": d["n"]}
