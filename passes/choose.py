"""choose: keeps the fastest of several finalists whose accuracy, measured afresh, holds against a reference.

Consumes: ``candidates`` — ``Lowered`` finalists picked by ``select`` and evaluated on the validation split after
whatever changed them since the search (``distill``); ``reference`` — the unpruned FP32 model evaluated on the same
split. Produces: the chosen ``Lowered``, its ``metrics["finalists"]`` recording every finalist's paired accuracy
change and latency ratio. Accuracy changes are paired (same examples) with a bootstrap interval; the rule is on the
mean change, as ``select``'s. The finalists that hold are timed again on their target, interleaved with one another
and the reference, so the pick never rests on search-time timings taken minutes apart (or on a busy machine); when
the CPU stays busy through every attempt the pick says so. The test split stays unseen until the chosen model is
evaluated on it. Skipped when no finalist holds.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
from pydantic import Field

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext
from tailorfit.pipeline.errors import StepSkipped, TailorfitError
from tailorfit.pipeline.models.handles import Lowered
from tailorfit.pipeline.search.stats import correct_by_id, paired_difference
from tailorfit.targets import get_target
from tailorfit.targets.timing import measure_interleaved

from .benchmark import check_length, synthetic_inputs


class ChooseConfig(PassConfig):
    max_accuracy_drop: float = Field(default=1.0, ge=0, description="accuracy points below the reference allowed (paired, on the finalists' split)")
    latency_runs: int = Field(default=50, ge=0, description="interleaved rounds timing the finalists that hold against the reference (0: rank by the search-time ratios)")
    sequence_length: int = Field(default=128, ge=1, description="tokens per input when timing (batch 1), as the search's")


class Choose(Pass):
    name = "choose"
    Config = ChooseConfig
    version = 2  # re-times the finalists that hold instead of ranking them by search-time latency
    packages = ()  # the finalists' target adds its own (packages_for)
    keyed_context = ("seed", "threads")  # the pick depends on latency, which depends on the thread count

    def packages_for(self, inputs: dict[str, Any]) -> tuple[str, ...]:
        return (*self.packages, *dict.fromkeys(p for m in inputs["candidates"] for p in get_target(m.target).packages))

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
            rows.append({"candidate": m.candidate, "split": m.metrics["split"], "accuracy": m.metrics["accuracy"], "accuracy_change": change,
                         "latency_ratio": m.source.selection.search_metrics["latency_ratio"], "search_accuracy": m.source.selection.search_metrics["accuracy"],
                         "distillation": m.source.distillation})
        held = [r for r in rows if -100 * r["accuracy_change"]["difference"] <= self.config.max_accuracy_drop + 1e-9]
        for r in rows:
            ctx.log.info("finalist %s: %s accuracy %.2f%% (%+.2f pts vs reference), latency x%.2f of FP32%s", r["candidate"], reference.metrics["split"],
                         100 * r["accuracy"], 100 * r["accuracy_change"]["difference"], r["latency_ratio"], "" if r in held else " — too inaccurate")
        if not held:
            raise StepSkipped(f"no finalist is within {self.config.max_accuracy_drop} accuracy points of the reference")
        chosen_by = f"fastest within {self.config.max_accuracy_drop} pts"
        if self.config.latency_runs:
            chosen_by += self._retime(ctx, [m for m in candidates if any(r["candidate"] == m.candidate for r in held)], reference, held)
        best = min(held, key=lambda r: (r["latency_ratio"], -r["accuracy"]))
        chosen = next(m for m in candidates if m.candidate == best["candidate"])
        return chosen.model_copy(update={"metrics": {**chosen.metrics, "finalists": rows, "chosen_by": chosen_by}})

    def _retime(self, ctx: PassContext, models: list[Lowered], reference: Lowered, held: list[dict[str, Any]]) -> str:
        """Time the finalists that hold interleaved with the reference; their rows' ``latency_ratio`` becomes this
        measurement (the search's stays as ``search_latency_ratio``). Returns how the pick was timed, for ``chosen_by``."""
        rng = np.random.default_rng(ctx.seed)
        runs = {}
        for m in [reference, *models]:
            check_length(m, self.config.sequence_length)
            session, inputs = get_target(m.target).session(m.files, ctx.threads, m.inference_precision), synthetic_inputs(m, self.config.sequence_length, rng)
            runs["reference" if m is reference else m.candidate] = functools.partial(session, inputs)
        timed = measure_interleaved(runs, warmup=5, rounds=self.config.latency_runs)
        load = timed.stats["reference"].other_cpu_load
        for r in held:
            r["search_latency_ratio"], r["latency_ratio"] = r["latency_ratio"], timed.ratio(r["candidate"], "reference")
            ctx.log.info("finalist %s re-timed: latency x%.2f of FP32 (x%.2f at search time)", r["candidate"], r["latency_ratio"], r["search_latency_ratio"])
        how = f", timed interleaved with the reference ({self.config.latency_runs} rounds at {self.config.sequence_length} tokens"
        if timed.stats["reference"].busy:
            ctx.log.warning("the pick rests on latency timed while other processes used %.2f cores in every attempt", load)
            return how + f"; the CPU was busy: other processes used {load:.2f} cores)"
        return how + ")"


def _correct(m: Lowered) -> dict[Any, int]:
    if "predictions" not in m.reports:
        raise TailorfitError(f"{m.candidate} on {m.target} has not been evaluated", "add an evaluate step before choose")
    return correct_by_id(m.reports["predictions"])


def _aligned(a: dict[Any, int], b: dict[Any, int]) -> tuple[np.ndarray, np.ndarray]:
    if a.keys() != b.keys():
        raise TailorfitError("a finalist and the reference were evaluated on different examples", "evaluate both on the same split of the same dataset")
    ids = sorted(a)
    return np.array([a[i] for i in ids]), np.array([b[i] for i in ids])
