"""evaluate: accuracy (classification), Pearson's r and Spearman's rho (regression) or perplexity (causal LM) of a
lowered model, run on its target runtime.

Consumes: ``Lowered`` and ``Dataset``. Produces: the same ``Lowered`` with ``metrics`` extended by
the score, its bootstrap 95% interval and the number of examples, and ``reports["predictions"]``:
per-example results keyed by the dataset row id, so any two models can be compared paired.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext
from tailorfit.pipeline.models.data import chunks, encode_rows, lm_batch, lm_windows, read_split
from tailorfit.pipeline.models.handles import Dataset, Lowered
from tailorfit.pipeline.models.loading import load_preprocessor, read_config, refuse_beyond_positions
from tailorfit.pipeline.models.regression import pearson, spearman
from tailorfit.pipeline.search.stats import bootstrap_ci
from tailorfit.targets import get_target


class EvaluateConfig(PassConfig):
    split: Literal["train", "validation", "test"] = "test"
    batch_size: int = Field(default=16, ge=1)
    max_length: int = Field(default=128, ge=8, description="tokens per example (classification) or per window (causal-lm)")
    max_windows: int | None = Field(default=None, ge=1, description="causal-lm: evaluate at most this many windows")
    bootstrap: int = Field(default=1000, ge=100, description="bootstrap resamples for the confidence interval")


class Evaluate(Pass):
    name = "evaluate"
    Config = EvaluateConfig
    packages = ("transformers",)  # and the target's (packages_for)

    def packages_for(self, inputs: dict[str, Any]) -> tuple[str, ...]:
        return (*self.packages, *get_target(inputs["model"].target).packages)
    portable = True

    def run(self, ctx: PassContext, model: Lowered, data: Dataset) -> Lowered:
        run = get_target(model.target).session(model.files, ctx.threads, model.inference_precision)
        tok = load_preprocessor(model.source)
        rows = read_split(data, self.config.split)
        path = ctx.work_dir / "predictions.jsonl"
        config = read_config(model.source.path)

        def fits(width: int) -> None:  # past the position table a runtime reads garbage or fails with an index error
            refuse_beyond_positions(config, width, model.candidate, "max_length")

        if data.task == "causal-lm":
            fits(self.config.max_length)
            metrics, records = self._perplexity(run, tok, rows, ctx)
        else:
            records = self._predict(run, tok, rows, model, ctx, fits, regression=data.task == "text-regression")
            metrics = self._regression(records, ctx) if data.task == "text-regression" else self._accuracy(records, ctx)
        with open(path, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        ctx.log.info("%s %s on %s: %s", model.candidate, model.target, self.config.split, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
        return model.model_copy(update={"metrics": {**model.metrics, **metrics}, "reports": {**model.reports, "predictions": path}})

    def _predict(self, run, tok, rows, model: Lowered, ctx: PassContext, fits: Callable[[int], None], regression: bool) -> list[dict[str, Any]]:
        """Per row, in the split's order: its label and the model's prediction (the class, or a regression's value)."""
        by_row: dict[int, dict] = {}
        # batches of rows of similar length: padding to a batch's longest row is most of the work on short texts
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].get("text", "")) + len(rows[i].get("text_pair", "")))
        with ctx.progress(f"evaluating {model.candidate} on {model.target}", len(rows)) as bar:
            for part in chunks(order, self.config.batch_size):
                batch = encode_rows(tok, [rows[i] for i in part], model.inputs, self.config.max_length)
                if "input_ids" in batch:
                    fits(batch["input_ids"].shape[1])
                logits = run(batch)
                for i, lg in zip(part, logits):
                    r = rows[i]
                    if regression:
                        by_row[i] = {"id": r["id"], "label": r["label"], "prediction": float(lg[0])}
                    else:
                        pred = int(np.argmax(lg))
                        by_row[i] = {"id": r["id"], "label": r["label"], "prediction": pred, "correct": int(pred == r["label"])}
                bar.advance(len(part))
        return [by_row[i] for i in range(len(rows))]  # in the split's order: paired comparisons match rows by position

    def _accuracy(self, records: list[dict[str, Any]], ctx: PassContext) -> dict[str, Any]:
        correct = np.array([r["correct"] for r in records], dtype=float)
        low, high = bootstrap_ci(correct, resamples=self.config.bootstrap, seed=ctx.seed)
        return {"accuracy": float(correct.mean()), "accuracy_ci95": [low, high], "examples": len(records), "split": self.config.split}

    def _regression(self, records: list[dict[str, Any]], ctx: PassContext) -> dict[str, Any]:
        pairs = np.array([(r["prediction"], r["label"]) for r in records])
        out: dict[str, Any] = {}
        for name, score in (("pearson", pearson), ("spearman", spearman)):
            out[name] = score(pairs[:, 0], pairs[:, 1])
            # rows resampled as (prediction, label) pairs: the interval of the correlation itself
            low, high = bootstrap_ci(np.arange(len(pairs)), statistic=lambda i, f=score: f(pairs[i, 0], pairs[i, 1]), resamples=self.config.bootstrap, seed=ctx.seed)
            out[f"{name}_ci95"] = [low, high]
        out["mse"] = float(((pairs[:, 0] - pairs[:, 1]) ** 2).mean())
        return {**out, "examples": len(records), "split": self.config.split}

    def _perplexity(self, run, tok, rows, ctx: PassContext):
        windows = lm_windows(tok, rows, self.config.max_length, self.config.max_windows)
        records = []
        with ctx.progress("perplexity windows", len(windows)) as bar:
            for i, w in enumerate(windows):
                logits = run(lm_batch(w[None]))[0].astype(np.float64)
                shifted = logits[:-1] - logits[:-1].max(-1, keepdims=True)
                logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
                nll = -logp[np.arange(len(w) - 1), w[1:]]
                records.append({"id": i, "nll_sum": float(nll.sum()), "tokens": int(len(nll))})
                bar.advance(1)
        nll = np.array([r["nll_sum"] for r in records])
        tokens = np.array([r["tokens"] for r in records], dtype=float)
        ppl = math.exp(nll.sum() / tokens.sum())
        # windows have equal length, so the mean over windows is the per-token mean
        low, high = bootstrap_ci(nll / tokens, statistic=lambda v: math.exp(v.mean()), resamples=self.config.bootstrap, seed=ctx.seed)
        return {
            "perplexity": ppl, "perplexity_ci95": [low, high], "windows": len(records), "window_tokens": self.config.max_length,
            "tokens": int(tokens.sum()), "split": self.config.split,
        }, records
