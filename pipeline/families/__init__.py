"""Model families: everything tailorfit knows about one architecture, one module per family.

A family says where a transformer keeps its layers and linear groups, which config keys state its shape,
which tensors it takes and what is odd about its cost; everything else in tailorfit is generic. To add a
family, write a module here that calls ``register(ModelFamily(...))`` and import it at the bottom of this file.
Importing this package does not import torch, so plain-data modules (``supernet/space.py``) can use it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tailorfit.pipeline.errors import TailorfitError

if TYPE_CHECKING:
    from torch import nn

LINEAR_GROUPS = ("qkv", "attn_out", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class ConfigKeys:
    """The config.json keys that state a family's shape."""

    layers: str
    hidden: str
    heads: str
    ffn: str
    kv_heads: str | None = None  # grouped-query attention; without it every query head has its own KV head
    head_dim: str | None = None  # without it the head size is hidden / heads (and cannot be stated apart from them)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]  # the Hugging Face model_type values it covers
    layers: str  # dotted suffix of the ModuleList holding the transformer layers
    groups: dict[str, tuple[str, ...]]  # linear group -> linear module paths relative to a layer (Q, K, V in that order, or one fused)
    kind: Literal["encoder", "decoder"]
    modality: Literal["text", "image"]
    attention: str  # the attention module (relative to a layer) whose own products (QK^T, AV) follow the qkv precision
    config_keys: ConfigKeys
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    # attributes of the attention module that its forward reshapes or slices by, rather than by -1: activate sets them
    # per layer ("config.x": on the layer's own copy of that object)
    head_count_attributes: tuple[str, ...] = ()  # to the query-head count
    kv_head_count_attributes: tuple[str, ...] = ()  # to the KV-head count
    head_width_attributes: tuple[str, ...] = ()  # to query heads x head size

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks tailorfit runs this family for."""
        if self.kind == "decoder":
            return ("causal-lm",)
        return ("text-classification", "text-regression") if self.modality == "text" else (f"{self.modality}-classification",)

    def num_layers(self, config: Mapping[str, Any]) -> int:
        key = self.config_keys.layers
        if key not in config:
            raise TailorfitError(f"the {self.name} model's config states no layer count", f"add {key} to config.json")
        return int(config[key])

    def ffn_size(self, config: Mapping[str, Any]) -> int:
        return int(config[self.config_keys.ffn])

    def dims(self, config: Mapping[str, Any]) -> dict[str, int]:
        """The shape a search space is built over, from a config dict."""
        keys = self.config_keys
        hidden, heads = int(config[keys.hidden]), int(config[keys.heads])
        kv_heads = config.get(keys.kv_heads) if keys.kv_heads else None
        head_dim = config.get(keys.head_dim) if keys.head_dim else None
        return {
            "num_layers": self.num_layers(config), "hidden_size": hidden, "num_heads": heads,
            "num_kv_heads": int(kv_heads or heads), "head_dim": int(head_dim or hidden // heads), "ffn_size": self.ffn_size(config),
        }

    def input_names(self, config: Mapping[str, Any]) -> list[str]:
        """The tensors the model is exported with, in order."""
        return list(self.inputs)

    def embedding_params(self, model: nn.Module) -> int:
        """Parameters of the input embeddings (the part the decoder perplexity proxy leaves out)."""
        from torch import nn

        return sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False))

    def layer_list(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        """The layers' ModuleList and its path in ``model`` (task heads add prefixes like ``bert.``)."""
        from torch import nn

        found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and (n == self.layers or n.endswith("." + self.layers))]
        if not found:
            raise TailorfitError(f"no '{self.layers}' layer list in this {self.name} model", "the model does not match its declared family")
        return min(found, key=lambda nm: len(nm[0]))

    def spec(self) -> dict[str, Any]:
        """The family as plain data, for one found by structure to travel on its model's handle."""
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ModelFamily:
        tuples = {k: tuple(spec[k]) for k in ("model_types", "inputs", "head_count_attributes", "kv_head_count_attributes", "head_width_attributes")}
        return cls(**{**spec, **tuples, "groups": {g: tuple(v) for g, v in spec["groups"].items()}, "config_keys": ConfigKeys(**spec["config_keys"])})

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


_registered: list[ModelFamily] = []


def register(family: ModelFamily) -> ModelFamily:
    """Add a family to the registry; each family module calls it once, at import."""
    taken = {t for f in _registered for t in f.model_types}
    if family.name in {f.name for f in _registered} or taken & set(family.model_types):
        raise ValueError(f"family '{family.name}' repeats a registered name or model_type")
    _registered.append(family)
    return family


def _supported() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)


def find_family(model_type: str) -> ModelFamily | None:
    """The family covering a Hugging Face ``model_type``; None for an architecture no module describes, which still
    loads, fine-tunes, lowers, quantizes whole and is measured: only layer-wise work needs a family."""
    return next((fam for fam in FAMILIES if model_type in fam.model_types), None)


def family_for(model_type: str) -> ModelFamily:
    if (fam := find_family(model_type)) is None:
        raise TailorfitError(f"unsupported architecture '{model_type}'", f"supported families: {_supported()}; add a module in pipeline/families/ for a new one")
    return fam


def family_by_name(name: str | None, needed_for: str = "this step", seen: str | None = None) -> ModelFamily:
    """``name`` None: the model's architecture has no family module, and ``needed_for`` needs one (``seen``: why its
    structure could not stand in for one)."""
    if name is None:
        raise TailorfitError(f"{needed_for} needs to know where the model keeps its layers and linear groups, and no family module describes its architecture"
                             + (f"; {seen}" if seen else ""), f"use a model of a supported family ({_supported()}), or add a module in pipeline/families/")
    for fam in FAMILIES:
        if fam.name == name:
            return fam
    raise TailorfitError(f"unknown model family '{name}'", f"use one of: {_supported()}; add a module in pipeline/families/ for a new one")


# The family modules build on the base above and register in this order; a new family is one more name here.
from tailorfit.pipeline.families import bert, vit, llama, gpt2, distilbert, phi3  # noqa: E402,F401

FAMILIES: tuple[ModelFamily, ...] = tuple(_registered)
