"""select: picks one candidate from a search's Pareto front by a rule and extracts it as a standalone model.

Consumes: ``SearchResult``. Produces: ``HFModel`` — the dense sub-network (as ``extract`` writes it) carrying a
``Selection``: the candidate, the rule, its precision policy (``quantize`` with ``policy: selected`` applies it)
and the search-time metrics, which ``package`` sets beside the final ones. One select step per rule; the rules
read the validation-split measurements of the search:

- ``fastest`` / ``smallest``: lowest latency / size among candidates whose accuracy drop vs the unpruned FP32
  model (paired, on the same validation examples) is at most ``max_accuracy_drop`` points;
- ``most_accurate``: highest accuracy on the front;
- ``knee``: the front point farthest from the line joining its two extremes (latency vs accuracy, normalised).

``rank: k`` takes the k-th best by the rule instead of the best (the default recipe distils the three fastest
under a relaxed constraint and lets ``choose`` keep the fastest that still holds the accuracy).

Latency here is the search's paired ratio to the unpruned FP32 model (timed interleaved with it).

When no candidate satisfies the rule the step is skipped, with the reason in the manifest: nothing that breaks
the rule gets packaged.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from tailorfit.pipeline.contract import Facts, Pass, PassConfig, PassContext, PortFacts
from tailorfit.pipeline.errors import StepSkipped
from tailorfit.pipeline.models.handles import HFModel, SearchResult, Selection
from tailorfit.pipeline.models.policy import QuantizationPolicy
from tailorfit.pipeline.supernet.space import SubnetConfig

from .extract import Extract, ExtractConfig


class SelectConfig(PassConfig):
    rule: Literal["fastest", "smallest", "most_accurate", "knee"] = "fastest"
    max_accuracy_drop: float | None = Field(default=1.0, ge=0, description="fastest / smallest: accuracy points below unpruned FP32 allowed (paired, validation)")
    rank: int = Field(default=1, ge=1, description="fastest / smallest / most_accurate: take the rank-th best (finalists for distill + choose)")
    name: str | None = Field(default=None, description="model name for candidate ids (default: <rule>-<candidate id>)")


class Select(Pass):
    name = "select"
    Config = SelectConfig
    packages = ("torch", "transformers", "safetensors")
    portable = True

    def ensures(self, inputs: PortFacts) -> Facts:
        """The searched model's facts, less its shape (the pick's is known only after the search), marked as selected."""
        return {**{k: v for k, v in inputs["search"].items() if k not in ("num_layers", "dims")}, "selected": True}

    def run(self, ctx: PassContext, search: SearchResult) -> HFModel:
        row = self._pick(search.front)
        ctx.log.info("%s: candidate %s, validation accuracy %.2f%% (%+.2f pts vs FP32), latency x%.2f of FP32 on %s", self.config.rule, row["id"],
                     100 * row["metrics"]["accuracy"], 100 * row["metrics"]["accuracy_change_vs_fp32"]["difference"], row["metrics"]["latency_ratio"], search.target)
        subnet = SubnetConfig.model_validate(row["subnet"])
        name = self.config.name or f"{self.config.rule.replace('_', '-')}-{row['id']}"
        dense = Extract(ExtractConfig(subnet=subnet, name=name)).run(ctx, supernet=search.supernet)
        selection = Selection(candidate=row["id"], rule=self._describe(), origin=search.supernet.source.key, subnet=subnet, policy=QuantizationPolicy.model_validate(row["policy"]),
                              search_metrics={"target": search.target, "split": "validation", **row["metrics"]})
        return dense.model_copy(update={"selection": selection})

    def _describe(self) -> str:
        c = self.config
        described = f"{c.rule} within {c.max_accuracy_drop} pts of FP32" if c.rule in ("fastest", "smallest") and c.max_accuracy_drop is not None else c.rule
        return described if c.rank == 1 else f"{described}, rank {c.rank}"

    def _pick(self, front: list[dict[str, Any]]) -> dict[str, Any]:
        c = self.config
        if not front:
            raise StepSkipped("the search found no candidate meeting its constraints")
        if c.rule == "knee":
            return _knee(front)
        if c.rule == "most_accurate":
            ranked = sorted(front, key=lambda r: -r["metrics"]["accuracy"])
        else:
            eligible = front
            if c.max_accuracy_drop is not None:
                eligible = [r for r in front if -100 * r["metrics"]["accuracy_change_vs_fp32"]["difference"] <= c.max_accuracy_drop + 1e-9]
            if not eligible:
                best = min(-100 * r["metrics"]["accuracy_change_vs_fp32"]["difference"] for r in front)
                raise StepSkipped(f"no Pareto candidate is within {c.max_accuracy_drop} accuracy points of FP32 (the closest is {best:.2f} below)")
            metric = "latency_ratio" if c.rule == "fastest" else "size_mb"
            ranked = sorted(eligible, key=lambda r: (r["metrics"][metric], -r["metrics"]["accuracy"]))
        if c.rank > len(ranked):
            raise StepSkipped(f"only {len(ranked)} Pareto candidates meet the rule, so there is no rank {c.rank}")
        return ranked[c.rank - 1]


def _knee(front: list[dict[str, Any]]) -> dict[str, Any]:
    if len(front) < 3:
        return max(front, key=lambda r: r["metrics"]["accuracy"])
    pts = np.array([[r["metrics"]["latency_ratio"], r["metrics"]["accuracy"]] for r in front])
    pts = (pts - pts.min(0)) / np.maximum(pts.max(0) - pts.min(0), 1e-12)
    a, b = pts[pts[:, 0].argmin()], pts[pts[:, 0].argmax()]
    direction = (b - a) / max(np.linalg.norm(b - a), 1e-12)
    offsets = pts - a
    distance = np.abs(offsets[:, 0] * direction[1] - offsets[:, 1] * direction[0])
    return front[int(distance.argmax())]
