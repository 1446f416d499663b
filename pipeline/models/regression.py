"""Scores of a regression head (text-regression): one number per row against a float label."""
from __future__ import annotations

import numpy as np

from tailorfit.pipeline.errors import TailorfitError


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson's r; 0 where either side is constant (a collapsed head predicts one value, and has no correlation)."""
    p, y = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    if p.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(p, y)[0, 1])


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties share their mean rank)."""
    from scipy.stats import rankdata

    return pearson(rankdata(predictions), rankdata(labels))


def refuse_regression(task: str | None, step: str) -> None:
    """Super-networks, their search and distillation compare models by per-row correctness and class
    probabilities, which a regression head has not: refused before anything runs."""
    if task == "text-regression":
        raise TailorfitError(f"{step} does not take a text-regression model yet (it compares models by per-row correctness and class probabilities)",
                             "run a regression model's plain chain (finetune, lower, quantize, evaluate, benchmark, package), or use task: text-classification")
