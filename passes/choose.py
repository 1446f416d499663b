"""choose: keeps the fastest of several finalists whose accuracy, measured afresh, holds against a reference.

Consumes: ``candidates`` — ``Lowered`` finalists picked by ``select`` (each with its search-time latency ratio to the
unpruned FP32 model, timed interleaved) and evaluated on the validation split after whatever changed them since the
search (``distill``); ``reference`` — the unpruned FP32 model evaluated on the same split. Produces: the chosen
``Lowered``, its ``metrics["finalists"]`` recording every finalist's paired accuracy change and latency ratio.
Accuracy changes are paired (same examples) with a bootstrap interval; the rule is on the mean change, as ``select``'s.
The test split stays unseen until the chosen model is evaluated on it. Skipped when no finalist holds.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext
from tailorfit.pipeline.errors import StepSkipped, TailorfitError
from tailorfit.pipeline.models.handles import Lowered
from tailorfit.pipeline.search.stats import correct_by_id, paired_difference


class ChooseConfig(PassConfig):
    max_accuracy_drop: float = Field(default=1.0, ge=0, description="accuracy points below the reference allowed (paired, on the finalists' split)")


class Choose(Pass):
    name = "choose"
    Config = ChooseConfig
    packages = ()

    def run(self, ctx: PassContext, candidates: list[Lowered], reference: Lowered) -> Lowered:
        if not candidates:
            raise StepSkipped("no finalist reached this step")
        truth = _correct(reference)
        rows = []
        for m in candidates:
            if m.source.selection is None:
                raise TailorfitError(f"finalist {m.candidate} was not picked by a search", "feed choose the branches of select steps")
            if m.metrics.get("split") != reference.metrics.get("split"):
                raise TailorfitError(f"finalist {m.candidate} was evaluated on {m.metrics.get('split')}, the reference on {reference.metrics.get('split')}",
                                     "evaluate both on the validation split")
            change = paired_difference(*_aligned(_correct(m), truth), seed=ctx.seed)
            rows.append({"candidate": m.candidate, "accuracy": m.metrics["accuracy"], "accuracy_change": change,
                         "latency_ratio": m.source.selection.search_metrics["latency_ratio"], "search_accuracy": m.source.selection.search_metrics["accuracy"],
                         "distillation": m.source.distillation})
        held = [r for r in rows if -100 * r["accuracy_change"]["difference"] <= self.config.max_accuracy_drop + 1e-9]
        for r in rows:
            ctx.log.info("finalist %s: %s accuracy %.2f%% (%+.2f pts vs reference), latency x%.2f of FP32%s", r["candidate"], reference.metrics["split"],
                         100 * r["accuracy"], 100 * r["accuracy_change"]["difference"], r["latency_ratio"], "" if r in held else " — too inaccurate")
        if not held:
            raise StepSkipped(f"no finalist is within {self.config.max_accuracy_drop} accuracy points of the reference")
        best = min(held, key=lambda r: (r["latency_ratio"], -r["accuracy"]))
        chosen = next(m for m in candidates if m.candidate == best["candidate"])
        return chosen.model_copy(update={"metrics": {**chosen.metrics, "finalists": rows, "chosen_by": f"fastest within {self.config.max_accuracy_drop} pts"}})


def _correct(m: Lowered) -> dict[Any, int]:
    if "predictions" not in m.reports:
        raise TailorfitError(f"{m.candidate} on {m.target} has not been evaluated", "add an evaluate step before choose")
    return correct_by_id(m.reports["predictions"])


def _aligned(a: dict[Any, int], b: dict[Any, int]) -> tuple[np.ndarray, np.ndarray]:
    if a.keys() != b.keys():
        raise TailorfitError("a finalist and the reference were evaluated on different examples", "evaluate both on the same split of the same dataset")
    ids = sorted(a)
    return np.array([a[i] for i in ids]), np.array([b[i] for i in ids])
