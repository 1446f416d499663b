"""quantize: post-training quantization on the target, driven by a per-layer QuantizationPolicy.

Consumes: ``Lowered`` (FP32) and ``Dataset`` (calibration rows from its train split).
Produces: ``Lowered`` where the policy's int8 / int4 linears are quantized and its fp32 ones stay float.
``scheme: static`` (default) quantizes weights and activations to INT8 with calibration; ``scheme: weight-only``
rounds only weights (RTN, int8 per channel or int4 per group: the decoder recipe, where weights dominate).
Post-condition: the precisions the artifact really computes in are read back from the runtime or artifact and
must match the policy; the comparison is kept as ``precision_report.json``.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext, PortFacts
from tailorfit.pipeline.models.data import encode_rows, lm_batch, lm_windows, read_split
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.host import lacks_native
from tailorfit.pipeline.models.handles import Dataset, Lowered
from tailorfit.pipeline.models.loading import export_ready, family_of, layer_count, load_preprocessor, read_config, refuse_beyond_positions
from tailorfit.pipeline.models.policy import HEAD, QuantizationPolicy, policy_label
from tailorfit.targets import get_target
from tailorfit.targets.base import read_linear_map


class QuantizeConfig(PassConfig):
    policy: QuantizationPolicy | Literal["selected"] = Field(
        default=QuantizationPolicy(), description="'int8', {default, head, layers: {'3': fp32, '*.ffn_down': fp32}}, or 'selected' (the policy a search chose for the model)")
    calibration_samples: int = Field(default=300, ge=1)
    max_length: int = Field(default=128, ge=8, description="tokens per calibration example / window")
    scheme: Literal["static", "weight-only"] = Field(default="static", description="static: INT8 weights and activations, calibrated; weight-only: int8/int4 weights, float activations")
    group_size: int = Field(default=32, ge=2, multiple_of=2, description="weight-only int4: inputs sharing one scale")

    @field_validator("policy", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"default": value} if isinstance(value, str) and value != "selected" else value


class Quantize(Pass):
    name = "quantize"
    Config = QuantizeConfig
    packages = ()  # the target's own quantizer packages come with it (packages_for)
    portable = True


    def packages_for(self, inputs: dict[str, Any]) -> tuple[str, ...]:
        return (*self.packages, *get_target(inputs["model"].target).packages)

    def caveats(self, host: Mapping[str, Any]) -> list[str]:
        missing = lacks_native("int8", dict(host)) if self.config.scheme == "static" else None  # weight-only computes in float
        return [missing] if missing else []

    def requires(self, inputs: PortFacts) -> None:
        if self.config.policy == "selected" and not inputs["model"].get("selected"):
            raise TailorfitError("policy 'selected' quantizes a model a search picked, but this one comes from no select step",
                                 "feed this quantize step from a select step's branch, or give a policy such as int8")
        layers = inputs["model"].get("num_layers")
        if self.config.policy != "selected":
            if "family" in inputs["model"] and inputs["model"]["family"] is None:
                _refuse_layer_wise(self.config.policy)
            if layers is not None:
                self._resolve(self.config.policy, layers)

    def _resolve(self, policy: QuantizationPolicy, layers: int) -> dict[str, str]:
        resolved = policy.resolve(layers)
        if set(resolved.values()) == {"fp32"}:
            raise TailorfitError("the quantization policy keeps every layer fp32", "drop the quantize step, or make some layers int8")
        if self.config.scheme == "static" and "int4" in resolved.values():
            raise TailorfitError("the policy asks for int4, which only weight-only quantization has", "set scheme: weight-only, or use int8")
        return resolved

    def run(self, ctx: PassContext, model: Lowered, data: Dataset) -> Lowered:
        if model.precision != "fp32":
            raise TailorfitError(f"quantize needs an FP32 lowered model, got a {model.precision} one", "feed quantize from a lower step")
        family = family_of(model.source) if model.source.family else None
        layers = layer_count(model.source.path, family)
        policy = self.config.policy
        if layers is None:  # no family module: every linear counts as outside the layers, under the whole-model precision
            _refuse_layer_wise(policy)
            layers = 0
        if policy == "selected":
            if model.source.selection is None:
                raise TailorfitError(f"quantize was asked for the selected policy, but {model.source.name} was not picked by a search", "feed it from a select step, or give a policy")
            policy = model.source.selection.policy
            if set(policy.resolve(layers).values()) == {"fp32"}:  # a searched FP32 candidate passes through unchanged
                ctx.log.info("the selected candidate runs in FP32: nothing to quantize")
                return model
        target = get_target(model.target)
        resolved = self._resolve(policy, layers)
        expected = {}
        for node, module in read_linear_map(model.files).items():
            where = family.classify(module) if family else None
            key = HEAD if where is None else f"{where[0]}.{where[1]}"
            expected[node] = (resolved[key], where is None or where[2])
        out = ctx.work_dir / target.folder
        out.mkdir()
        label = policy_label(resolved)
        if self.config.scheme == "weight-only":
            mapped = read_linear_map(model.files)
            weights = {node: p for node, (p, is_linear) in expected.items() if is_linear}
            with ctx.progress("rounding weights (RTN)", None):
                files = target.compress_weights(model.files, weights, self.config.group_size, out, lambda: export_ready(model.source))
            stored = target.weight_precisions(files)
            report = self._verify({n: stored[mapped[n]] for n in weights if mapped[n] in stored}, {n: (weights[n], True) for n in weights}, exact=True)
            label += "-weights"
        else:
            keep = sorted(n for n, (p, _) in expected.items() if p == "fp32")
            with ctx.progress("calibrating and quantizing", None):
                files = target.quantize(model.files, keep, self.calibration_inputs(model, data, ctx.seed), self.config.calibration_samples, out)
            report = self._verify(target.runtime_precisions(files, ctx.threads, model.inference_precision), expected, exact=False)
        (ctx.work_dir / "precision_report.json").write_text(json.dumps(report, indent=1))
        suffix = label if not label.startswith("mixed") else label + "-" + hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:6]
        counts = {f"{p}_linears": report[f"{p}_linears"] for p in ("int8", "int4", "fp32")}
        ctx.log.info("%s: %s, verified on the %s", target.name, ", ".join(f"{v} linears {k.split('_')[0]}" for k, v in counts.items() if v),
                     "artifact's ops" if self.config.scheme == "weight-only" else "runtime")
        return Lowered(
            target=model.target, files=files, candidate=f"{model.source.name}-{suffix}", precision=label,
            inference_precision=model.inference_precision, inputs=model.inputs, policy=resolved, source=model.source,
            metrics={"params": model.metrics.get("params"), **counts},
            reports={"precision": ctx.work_dir / "precision_report.json"},
        )

    def calibration_inputs(self, model: Lowered, data: Dataset, seed: int) -> list[dict[str, Any]]:
        """The model's input batches drawn from the train split, as the runtime's quantizer sees them."""
        tok = load_preprocessor(model.source)
        rows = read_split(data, "train")
        if data.task == "causal-lm":
            refuse_beyond_positions(read_config(model.source.path), self.config.max_length, model.candidate, "max_length")
            windows = lm_windows(tok, rows, self.config.max_length, self.config.calibration_samples)
            return [lm_batch(w[None]) for w in windows]
        rows = random.Random(seed).sample(rows, min(self.config.calibration_samples, len(rows)))
        batches = [encode_rows(tok, [r], model.inputs, self.config.max_length) for r in rows]
        longest = max((b["input_ids"].shape[1] for b in batches if "input_ids" in b), default=0)
        refuse_beyond_positions(read_config(model.source.path), longest, model.candidate, "max_length")
        return batches

    @staticmethod
    def _verify(actual: dict[str, str | None], expected: dict[str, tuple[str, bool]], exact: bool) -> dict[str, Any]:
        """Compare the runtime's precisions with the policy's, for the linears (attention products are not checked).

        ``exact``: weight-only precisions are read from the artifact and must equal the policy's; a static model's
        runtime may report any integer kernel (u8, i8) for an int8 linear, so only int8-or-not is compared.
        """
        rows, wrong = [], []
        for node, (want, is_linear) in sorted(expected.items()):
            # attention products run inside fused kernels whose reported precision is not theirs alone
            got = actual.get(node) if is_linear else None
            rows.append({"node": node, "linear": is_linear, "policy": want, "runtime": got})
            if got is not None and (got != want if exact else (got == "int8") != (want == "int8")):
                wrong.append(f"{node}: policy {want}, runtime {got}")
        # an int8 linear may be fused beyond recognition at run time; one the policy keeps float must be found, and so must every weight-only one
        unseen = [n for n, (want, lin) in expected.items() if lin and (exact or want == "fp32") and n not in actual]
        if wrong or unseen:
            detail = "; ".join(wrong[:3] + [f"{n}: not found in the runtime graph" for n in unseen[:3]])
            raise TailorfitError(f"the runtime does not execute the policy: {detail}", "report this with --debug output; the policy could not be applied")
        linear = [r for r in rows if r["linear"]]
        if not any(r["runtime"] in ("int8", "int4") for r in linear):
            raise TailorfitError("the runtime executes no linear in an integer precision although the policy asks for some", "run with --debug and report it")
        return {
            **{f"{p}_linears": sum(r["runtime"] == p for r in linear) for p in ("int8", "int4", "fp32")},
            "unattributed_linears": sum(r["runtime"] is None for r in linear),
            "nodes": rows,
        }


def _refuse_layer_wise(policy: QuantizationPolicy | str) -> None:
    """A model no family module describes has no known layers or linear groups: only a whole-model precision applies."""
    if policy == "selected" or policy.layers or policy.head not in (None, policy.default):
        raise TailorfitError("a per-layer precision policy needs to know the model's layers and linear groups, and no family module describes this architecture",
                             "give a whole-model policy (int8, or weight-only int8/int4), or add a module in pipeline/families/")
