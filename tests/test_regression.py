"""Regression targets (``task: text-regression``): a float label per text pair, fine-tuned with a squared error,
scored by Pearson's r and Spearman's rho with bootstrap intervals on the runtime, INT8-quantized, compared paired
at packaging; the search side refuses it in one line (tests/test_bad_input.py)."""
from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from conftest import FILLER, NEGATIVE, POSITIVE
from tailorfit.pipeline import run_pipeline


def _pairs(n: int, seed: int = 0) -> list[dict]:
    """Two short texts and a score: positive words minus negative words over both, plus noise (an STS-like target)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        texts, score = [], 0.0
        for _side in range(2):
            words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
            for _ in range(rng.randint(0, 2)):
                sign = rng.choice((1, -1))
                words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if sign > 0 else NEGATIVE))
                score += sign
            texts.append(" ".join(words))
        rows.append({"first": texts[0], "second": texts[1], "score": round(score + rng.uniform(-0.3, 0.3), 3)})
    return rows


@pytest.fixture(scope="module")
def regression_run(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression")
    data = folder / "scores.csv"
    with open(data, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["first", "second", "score"])
        w.writeheader()
        w.writerows(_pairs(600))
    recipe = {"name": "scores", "seed": 0, "threads": 2, "steps": [
        {"id": "model", "pass": "load", "config": {"path": str(tiny_bert), "task": "text-regression", "name": "tiny"}},
        {"id": "data", "pass": "dataset", "config": {"path": str(data), "task": "text-regression", "text_column": ["first", "second"], "label_column": "score"}},
        {"id": "finetune", "pass": "finetune", "config": {"epochs": 4, "batch_size": 16, "max_length": 32, "learning_rate": 3e-3}},
        {"id": "fp32", "pass": "lower", "inputs": {"model": "finetune"}, "config": {"target": "openvino-cpu"}},
        {"id": "fp32-eval", "pass": "evaluate", "config": {"max_length": 32, "bootstrap": 200}},
        {"id": "int8", "pass": "quantize", "inputs": {"model": "fp32"}, "config": {"policy": "int8", "calibration_samples": 32, "max_length": 32}},
        {"id": "int8-eval", "pass": "evaluate", "config": {"max_length": 32, "bootstrap": 200}},
        {"id": "int8-bench", "pass": "benchmark", "config": {"sequence_lengths": [16], "runs": 50, "warmup": 2, "attempts": 1}},
        {"id": "package", "pass": "package", "inputs": {"models": ["fp32-eval", "int8-bench"]}},
    ]}
    return run_pipeline(recipe, out=folder / "out", quiet=True)


def test_the_split_is_stratified_by_label_quintile_and_states_the_labels(regression_run):
    data = regression_run.outputs["data"]
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["stratified"] == "by label quintile" and meta["label_names"] == []
    labels = {s: np.array([json.loads(line)["label"] for line in open(data.path / f"{s}.jsonl")]) for s in ("train", "validation", "test")}
    everything = np.concatenate(list(labels.values()))
    assert meta["label_stats"]["mean"] == pytest.approx(everything.mean()) and meta["label_stats"]["max"] == everything.max()
    assert all(isinstance(v, float) for v in labels["test"])
    # each split keeps the label distribution: its median within one quintile step of the whole's
    edges = np.quantile(everything, [0.4, 0.6])
    assert all(edges[0] <= np.median(part) <= edges[1] for part in labels.values())


def test_the_runtime_scores_agree_with_scipy_and_beat_predicting_the_mean(regression_run):
    fp32 = regression_run.outputs["fp32-eval"]
    rows = [json.loads(line) for line in open(fp32.reports["predictions"])]
    predicted, labels = np.array([r["prediction"] for r in rows]), np.array([r["label"] for r in rows])
    m = fp32.metrics
    assert m["pearson"] == pytest.approx(pearsonr(predicted, labels).statistic, abs=1e-9)
    assert m["spearman"] == pytest.approx(spearmanr(predicted, labels).statistic, abs=1e-9)
    assert m["pearson_ci95"][0] <= m["pearson"] <= m["pearson_ci95"][1] and m["examples"] == len(rows) == 60
    # the ceiling check: a head that learned nothing predicts about the mean, whose squared error is the variance
    assert m["pearson"] > 0.6 and m["mse"] < 0.7 * labels.var(), m
    log = json.loads((regression_run.outputs["finetune"].path.parent / "train_log.json").read_text())
    assert -1 <= log["best_validation"] <= 1  # fine-tuning kept the epoch with the best validation Pearson


def test_int8_holds_the_correlation_and_the_package_pairs_it_with_fp32(regression_run):
    fp32, int8 = regression_run.outputs["fp32-eval"], regression_run.outputs["int8-bench"]
    assert abs(int8.metrics["pearson"] - fp32.metrics["pearson"]) < 0.1
    metrics = json.loads((regression_run.run_dir / "metrics.json").read_text())
    change = metrics["tiny-int8"]["targets"]["openvino-cpu"]["versus"]["fp32"]["pearson_change"]
    assert change["n"] == 60 and change["ci_low"] <= change["difference"] <= change["ci_high"]
    assert change["difference"] == pytest.approx(int8.metrics["pearson"] - fp32.metrics["pearson"], abs=1e-9)
    card = (regression_run.run_dir / "candidates" / "tiny-int8" / "README.md").read_text()
    assert "Spearman" in card and ("Pearson +" in card or "Pearson -" in card)  # the quality column and the paired change
