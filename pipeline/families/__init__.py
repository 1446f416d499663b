"""Model families: where a transformer keeps its layers and linear groups.

One small adapter per architecture family; everything else in tailorfit is generic. To add a
family, add a ``ModelFamily`` to ``FAMILIES`` with the ``model_type`` values it covers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from tailorfit.pipeline.errors import TailorfitError

LINEAR_GROUPS = ("qkv", "attn_out", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]
    layers: str  # dotted suffix of the ModuleList holding the transformer layers
    groups: dict[str, tuple[str, ...]]  # linear group -> linear module paths relative to a layer
    kind: str  # "encoder" or "decoder"
    attention: str  # the attention module (relative to a layer) whose own products (QK^T, AV) follow the qkv precision

    def layer_list(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        """The layers' ModuleList and its path in ``model`` (task heads add prefixes like ``bert.``)."""
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and (n == self.layers or n.endswith("." + self.layers))]
        if not found:
            raise TailorfitError(f"no '{self.layers}' layer list in this {self.name} model", "the model does not match its declared family")
        return min(found, key=lambda nm: len(nm[0]))

    def classify(self, module: str) -> tuple[int, str, bool] | None:
        """``(layer, group, is_linear)`` for a module path inside a layer, None for one outside (the head)."""
        m = re.search(rf"(?:^|\.){re.escape(self.layers)}\.(\d+)\.(.+)$", module)
        if not m:
            return None
        layer, rest = int(m.group(1)), m.group(2)
        for group, rels in self.groups.items():
            if rest in rels:
                return layer, group, True
        if rest == self.attention:
            return layer, "qkv", False
        return None


_BERT_GROUPS = {
    "qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attn_out": ("attention.output.dense",),
    "ffn_up": ("intermediate.dense",),
    "ffn_down": ("output.dense",),
}

FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily("bert", ("bert", "roberta", "xlm-roberta", "camembert"), "encoder.layer", _BERT_GROUPS, "encoder", "attention.self"),
    ModelFamily(
        "vit", ("vit",), "encoder.layer",
        {**_BERT_GROUPS, "qkv": ("attention.attention.query", "attention.attention.key", "attention.attention.value")}, "encoder", "attention.attention",
    ),
    ModelFamily(
        "llama", ("llama", "mistral", "qwen2", "qwen3"), "layers",
        {
            "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "attn_out": ("self_attn.o_proj",),
            "ffn_up": ("mlp.gate_proj", "mlp.up_proj"),
            "ffn_down": ("mlp.down_proj",),
        },
        "decoder", "self_attn",
    ),
    ModelFamily(
        "gpt2", ("gpt2",), "h",
        {"qkv": ("attn.c_attn",), "attn_out": ("attn.c_proj",), "ffn_up": ("mlp.c_fc",), "ffn_down": ("mlp.c_proj",)}, "decoder", "attn",
    ),
)


def family_for(model_type: str) -> ModelFamily:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    supported = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)
    raise TailorfitError(
        f"unsupported architecture '{model_type}'",
        f"supported families: {supported}; add a ModelFamily in pipeline/families.py for a new one",
    )


def family_by_name(name: str) -> ModelFamily:
    return next(f for f in FAMILIES if f.name == name)
