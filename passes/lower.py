"""lower: a Hugging Face model to a target's runtime format (OpenVINO IR, ONNX).

Consumes: ``HFModel``. Produces: ``Lowered`` (FP32 weights) with a map from runtime nodes to torch
modules, used to apply per-layer precision policies. Post-condition: the runtime's outputs match
torch's on a traced example (max abs difference recorded; an error above ``tolerance`` at f32).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext, PortFacts
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.families import ModelFamily
from tailorfit.pipeline.host import has_native, host_info
from tailorfit.pipeline.models.handles import HFModel, Lowered
from tailorfit.pipeline.models.loading import export_ready, family_of
from tailorfit.targets import TARGETS, get_target
from tailorfit.targets.base import read_linear_map, write_linear_map


class LowerConfig(PassConfig):
    target: str = Field(description=f"one of: {', '.join(TARGETS)}")
    inference_precision: str | None = Field(default=None, description="precision of float ops at run time (default: the target's first, f32)")
    tolerance: float = Field(default=1e-3, gt=0, description="max abs logit difference vs torch allowed at f32")

    @field_validator("target")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in TARGETS:
            raise ValueError(f"unknown target '{value}'; use one of: {', '.join(TARGETS)}")
        return value


class Lower(Pass):
    name = "lower"
    Config = LowerConfig
    packages = ("torch", "transformers")  # and the target's (packages_for)
    portable = True

    def packages_for(self, inputs: dict[str, Any]) -> tuple[str, ...]:
        return (*self.packages, *get_target(self.config.target).packages)

    def requires(self, inputs: PortFacts) -> None:
        target = get_target(self.config.target)
        if self.config.inference_precision and self.config.inference_precision not in target.inference_precisions:
            raise TailorfitError(
                f"{target.name} cannot run at inference precision '{self.config.inference_precision}'",
                f"use one of: {', '.join(target.inference_precisions)}",
            )
        if self.config.inference_precision and not has_native(self.config.inference_precision):
            raise TailorfitError(f"this CPU ({host_info()['cpu']}) has no {self.config.inference_precision} instructions, so the runtime would not compute in it",
                                 "drop inference_precision (f32), or run on a CPU that has them")

    def run(self, ctx: PassContext, model: HFModel) -> Lowered:
        target = get_target(self.config.target)
        precision = self.config.inference_precision or target.inference_precisions[0]
        if model.task != "causal-lm" and model.num_labels is None:
            ctx.log.warning("%s has no trained task head: lowering it with a randomly initialised one (add a finetune step)", model.name)
        wrapper, example, names = export_ready(model)
        net = wrapper.model
        out = ctx.work_dir / target.folder
        out.mkdir()
        try:
            files = target.lower(wrapper, example, names, out)
        except TailorfitError:
            raise
        except Exception as exc:
            raise TailorfitError(f"{target.name} could not lower this {model.family + ' ' if model.family else ''}model: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", "try the other target, or run with --debug for details") from exc
        _keep_policy_nodes(files, net, family_of(model) if model.family else None)
        with torch.inference_mode():
            expected = wrapper(*example).numpy()
        got = target.session(files, ctx.threads, precision)({n: t.numpy() for n, t in zip(names, example)})
        diff = float(np.abs(got - expected).max())
        if precision == "f32" and diff > self.config.tolerance:
            raise TailorfitError(f"{target.name} output differs from torch by {diff:.2e} (> {self.config.tolerance})", "raise 'tolerance' if expected, or report a lowering bug")
        ctx.log.info("lowered to %s; max |runtime - torch| = %.2e", target.name, diff)
        label = "fp32" if precision == "f32" else precision
        return Lowered(
            target=target.name, files=files, candidate=f"{model.name}-{label}", precision="fp32", inference_precision=precision,
            inputs=names, source=model,
            metrics={"lowering_max_abs_diff": diff, "params": sum(p.numel() for p in net.parameters())},
        )


def _keep_policy_nodes(files: list, net: torch.nn.Module, family: ModelFamily | None) -> None:
    """Narrow the target's node map to what a precision policy controls: linear layers and attention products (where
    a family says which those are; without one, the linears only).

    Other matrix products (rotary embeddings, for instance) are left to the quantizer's defaults.
    """
    from transformers.pytorch_utils import Conv1D

    modules = dict(net.named_modules())

    def controlled(module: str) -> bool:
        where = family.classify(module) if family else None
        return isinstance(modules.get(module), (torch.nn.Linear, Conv1D)) or (where is not None and not where[2])

    write_linear_map(files[0].parent, {node: module for node, module in read_linear_map(files).items() if controlled(module)})
