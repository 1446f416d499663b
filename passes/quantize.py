"""quantize: INT8 post-training static quantization on the target, driven by a per-layer QuantizationPolicy.

Consumes: ``Lowered`` (FP32) and ``Dataset`` (calibration rows from its train split).
Produces: ``Lowered`` with INT8 linears where the policy says int8 and float where it says fp32.
Post-condition: the runtime's own per-op precisions are read back and must match the policy;
the comparison is kept as ``precision_report.json``.
"""
from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Literal

from pydantic import Field, field_validator

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext
from tailorfit.pipeline.data import encode_rows, lm_batch, lm_windows, read_split
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.families import family_by_name
from tailorfit.pipeline.handles import Dataset, Lowered
from tailorfit.pipeline.models import layer_count, load_preprocessor
from tailorfit.pipeline.policy import HEAD, QuantizationPolicy, policy_label
from tailorfit.targets import get_target
from tailorfit.targets.base import read_linear_map


class QuantizeConfig(PassConfig):
    policy: QuantizationPolicy | Literal["selected"] = Field(
        default=QuantizationPolicy(), description="'int8', {default, head, layers: {'3': fp32, '*.ffn_down': fp32}}, or 'selected' (the policy a search chose for the model)")
    calibration_samples: int = Field(default=300, ge=1)
    max_length: int = Field(default=128, ge=8, description="tokens per calibration example / window")

    @field_validator("policy", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"default": value} if isinstance(value, str) and value != "selected" else value


class Quantize(Pass):
    name = "quantize"
    Config = QuantizeConfig
    packages = ("openvino", "nncf", "onnxruntime", "onnx", "neural-compressor-pt", "torchao")

    def preflight(self, facts: dict[str, Any]) -> None:
        if "num_layers" in facts and self.config.policy != "selected":
            self._resolve(self.config.policy, facts["num_layers"])

    @staticmethod
    def _resolve(policy: QuantizationPolicy, layers: int) -> dict[str, str]:
        resolved = policy.resolve(layers)
        if set(resolved.values()) == {"fp32"}:
            raise TailorfitError("the quantization policy keeps every layer fp32", "drop the quantize step, or make some layers int8")
        return resolved

    def run(self, ctx: PassContext, model: Lowered, data: Dataset) -> Lowered:
        if model.precision != "fp32":
            raise TailorfitError(f"quantize needs an FP32 lowered model, got a {model.precision} one", "feed quantize from a lower step")
        layers = layer_count(model.source.path)
        policy = self.config.policy
        if policy == "selected":
            if model.source.selection is None:
                raise TailorfitError(f"quantize was asked for the selected policy, but {model.source.name} was not picked by a search", "feed it from a select step, or give a policy")
            policy = model.source.selection.policy
            if set(policy.resolve(layers).values()) == {"fp32"}:  # a searched FP32 candidate passes through unchanged
                ctx.log.info("the selected candidate runs in FP32: nothing to quantize")
                return model
        target = get_target(model.target)
        family = family_by_name(model.source.family)
        resolved = self._resolve(policy, layers)
        expected = {}
        for node, module in read_linear_map(model.files).items():
            where = family.classify(module)
            key = HEAD if where is None else f"{where[0]}.{where[1]}"
            expected[node] = (resolved[key], where is None or where[2])
        keep = sorted(n for n, (p, _) in expected.items() if p == "fp32")
        out = ctx.work_dir / target.folder
        out.mkdir()
        with ctx.progress("calibrating and quantizing", None):
            files = target.quantize(model.files, keep, self._calibration(model, data, ctx.seed), self.config.calibration_samples, out)
        report = self._verify(target.runtime_precisions(files, ctx.threads, model.inference_precision), expected)
        (ctx.work_dir / "precision_report.json").write_text(json.dumps(report, indent=1))
        label = policy_label(resolved)
        suffix = label if label != "mixed" else "mixed-" + hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:6]
        ctx.log.info("%s: %d linears int8, %d fp32, verified on the runtime", target.name, report["int8_linears"], report["fp32_linears"])
        return Lowered(
            target=model.target, files=files, candidate=f"{model.source.name}-{suffix}", precision=label,
            inference_precision=model.inference_precision, inputs=model.inputs, policy=resolved, source=model.source,
            metrics={"params": model.metrics.get("params"), "int8_linears": report["int8_linears"], "fp32_linears": report["fp32_linears"]},
            reports={"precision": ctx.work_dir / "precision_report.json"},
        )

    def _calibration(self, model: Lowered, data: Dataset, seed: int) -> list[dict[str, Any]]:
        tok = load_preprocessor(model.source)
        rows = read_split(data, "train")
        if data.task == "causal-lm":
            windows = lm_windows(tok, rows, self.config.max_length, self.config.calibration_samples)
            return [lm_batch(w[None]) for w in windows]
        rows = random.Random(seed).sample(rows, min(self.config.calibration_samples, len(rows)))
        return [encode_rows(tok, [r], model.inputs, self.config.max_length) for r in rows]

    @staticmethod
    def _verify(actual: dict[str, str], expected: dict[str, tuple[str, bool]]) -> dict[str, Any]:
        """Compare the runtime's precisions with the policy's, for the linears (attention products are not checked)."""
        rows, wrong = [], []
        for node, (want, is_linear) in sorted(expected.items()):
            # attention products run inside fused kernels whose reported precision is not theirs alone
            got = actual.get(node) if is_linear else None
            rows.append({"node": node, "linear": is_linear, "policy": want, "runtime": got})
            if got is not None and (got == "int8") != (want == "int8"):
                wrong.append(f"{node}: policy {want}, runtime {got}")
        kept = [n for n, (want, lin) in expected.items() if lin and want == "fp32"]
        unseen = [n for n in kept if n not in actual]
        if wrong or unseen:
            detail = "; ".join(wrong[:3] + [f"{n}: not found in the runtime graph" for n in unseen[:3]])
            raise TailorfitError(f"the runtime does not execute the policy: {detail}", "report this with --debug output; the policy could not be applied")
        linear = [r for r in rows if r["linear"]]
        if not any(r["runtime"] == "int8" for r in linear):
            raise TailorfitError("the runtime executes no linear in int8 although the policy asks for some", "run with --debug and report it")
        return {
            "int8_linears": sum(r["runtime"] == "int8" for r in linear),
            "fp32_linears": sum(r["runtime"] == "fp32" for r in linear),
            "unattributed_linears": sum(r["runtime"] is None for r in linear),
            "nodes": rows,
        }

