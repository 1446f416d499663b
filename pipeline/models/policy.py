"""QuantizationPolicy: per layer and per linear group, which precision a model runs in."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.families import LINEAR_GROUPS

Precision = Literal["int8", "int4", "fp32"]  # int4 only for weight-only quantization
HEAD = "head"  # linears outside the transformer layers: pooler, classifier, LM head
_KEY = re.compile(r"^(\*|\d+)(?:\.(\w+))?$")


class QuantizationPolicy(BaseModel):
    """A precision for every (layer, group), given as a default plus overrides.

    ``layers`` keys: ``"3"`` (all groups of layer 3), ``"3.ffn_down"`` (one group) or
    ``"*.qkv"`` (that group in every layer); more specific keys win. Groups: qkv, attn_out,
    ffn_up, ffn_down. ``head`` covers linears outside the layers (defaults to ``default``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    default: Precision = "int8"
    head: Precision | None = None
    layers: dict[str, Precision] = {}

    @field_validator("layers")
    @classmethod
    def _keys(cls, layers: dict[str, Precision]) -> dict[str, Precision]:
        for key in layers:
            m = _KEY.match(key)
            if not m or (m.group(2) and m.group(2) not in LINEAR_GROUPS):
                raise ValueError(f"'{key}' is not LAYER, LAYER.GROUP or *.GROUP with GROUP in {', '.join(LINEAR_GROUPS)}")
        return layers

    def resolve(self, num_layers: int) -> dict[str, Precision]:
        """``{"<layer>.<group>": precision, "head": precision}`` for a model with ``num_layers`` layers."""
        for key in self.layers:
            idx = key.split(".")[0]
            if idx != "*" and int(idx) >= num_layers:
                raise TailorfitError(
                    f"the quantization policy names layer {idx}, but the model has {num_layers} layers (0-{num_layers - 1})",
                    "fix the layer index in the policy",
                )
        out: dict[str, Precision] = {}
        for i in range(num_layers):
            for g in LINEAR_GROUPS:
                out[f"{i}.{g}"] = self.layers.get(f"{i}.{g}") or self.layers.get(str(i)) or self.layers.get(f"*.{g}") or self.default
        out[HEAD] = self.head or self.default
        return out


def policy_label(resolved: dict[str, str]) -> str:
    values = set(resolved.values())
    return values.pop() if len(values) == 1 else "mixed"
