"""Elastic super-networks made in place from a Hugging Face model, and dense sub-networks sliced out of them.

Every controlled linear becomes an ``ElasticLinear`` sharing the original parameters; a sub-network is
selected with ``ElasticModel.activate(config)``, which narrows each linear to a prefix of its rows and
columns and drops skipped layers. Importance reordering (``importance``) puts the most important heads (KV groups
for grouped-query attention) and FFN neurons first, so every prefix keeps the best units.
"""
from __future__ import annotations

import copy as copying
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from tailorfit.pipeline.families import LINEAR_GROUPS, ModelFamily
from tailorfit.pipeline.supernet.importance import Importance, greedy_drop_order, magnitude_importance, measured_importance
from tailorfit.pipeline.supernet.space import LayerChoice, SearchSpace, SubnetConfig


class ElasticLinear(nn.Module):
    """A linear layer computing with a front part of its outputs and the first ``active_in`` inputs of its weight.

    Wraps ``nn.Linear`` and GPT-2's ``Conv1D`` (whose weight is stored transposed), sharing their
    parameters. ``blocks`` lists the output sizes of a fused projection (Q|K|V in GPT-2 and Phi-3, Phi-3's
    gate|up): each block is narrowed from its own front (``narrow``) and reordered alike.
    """

    def __init__(self, base: nn.Module, blocks: tuple[int, ...] = ()):
        super().__init__()
        self.transposed = not isinstance(base, nn.Linear)
        self.weight, self.bias = base.weight, base.bias  # shared, not copied
        self.in_features, self.out_features = self.weight.shape if self.transposed else self.weight.shape[::-1]
        self.blocks = tuple(blocks) or (self.out_features,)
        if sum(self.blocks) != self.out_features:
            raise ValueError(f"blocks {self.blocks} do not add up to the {self.out_features} outputs")
        self.active_in, self.active = self.in_features, self.blocks

    @property
    def active_out(self) -> int:
        return sum(self.active)

    def narrow(self, *widths: int) -> None:
        """Keep the first ``widths`` outputs of each block (one width: the same in every block)."""
        self.active = widths * len(self.blocks) if len(widths) == 1 else widths

    def out_index(self, rows: torch.Tensor | list[torch.Tensor] | None = None) -> torch.Tensor:
        """Indices in the full weight of the active outputs, or of ``rows`` within each block (one tensor for all)."""
        if rows is None:
            rows = [torch.arange(a) for a in self.active]
        elif isinstance(rows, torch.Tensor):
            rows = [rows] * len(self.blocks)
        starts = torch.tensor((0, *self.blocks[:-1])).cumsum(0)
        return torch.cat([start + r for start, r in zip(starts, rows)])

    def active_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight as out x in, bias) of the active part."""
        weight = self.weight.T if self.transposed else self.weight
        if len(self.blocks) == 1:
            rows_w, bias = weight[: self.active_out], None if self.bias is None else self.bias[: self.active_out]
        else:
            index = self.out_index()
            rows_w, bias = weight[index], None if self.bias is None else self.bias[index]
        return rows_w[:, : self.active_in], bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.active_weight()
        return F.linear(x, weight, bias)

    def permute_outputs(self, rows: torch.Tensor | list[torch.Tensor]) -> None:
        """Reorder outputs: a permutation for every block, or one for all."""
        full = self.out_index(rows)  # a permutation of every output: gather index
        if self.transposed:
            self.weight.copy_(self.weight[:, full])
        else:
            self.weight.copy_(self.weight[full])
        if self.bias is not None:
            self.bias.copy_(self.bias[full])

    def permute_inputs(self, cols: torch.Tensor) -> None:
        if self.transposed:
            self.weight.copy_(self.weight[cols])
        else:
            self.weight.copy_(self.weight[:, cols])

    def input_magnitude(self) -> torch.Tensor:
        """L1 norm of the weight per input feature."""
        return (self.weight.abs().sum(1) if self.transposed else self.weight.abs().sum(0))

    def output_magnitude(self, block: int | None = None) -> torch.Tensor:
        """L1 norm of the weight per output feature, of one block or summed over the (equal) blocks of a fused projection."""
        per_block = (self.weight.abs().sum(0) if self.transposed else self.weight.abs().sum(1)).split(self.blocks)
        return torch.stack(per_block).sum(0) if block is None else per_block[block]

    def dense(self) -> nn.Module:
        """A plain layer of the original kind holding a copy of the active part."""
        weight, bias = self.active_weight()
        if self.active_out == 0 or self.active_in == 0:
            return RemovedLinear(bias if self.active_in == 0 else None, self.active_out)
        if self.transposed:
            from transformers.pytorch_utils import Conv1D

            out = Conv1D(weight.shape[0], weight.shape[1])
            with torch.no_grad():
                out.weight.copy_(weight.T)
                out.bias.copy_(bias)
            return out
        out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            out.weight.copy_(weight)
            if bias is not None:
                out.bias.copy_(bias)
        return out


class RemovedLinear(nn.Module):
    """What a zero-width linear computes, without zero-sized matrices (runtimes cannot compile those).

    With no inputs left (the FFN down projection of a removed FFN) the output is the bias alone; with no
    outputs (its up projection) it is an empty slice that nothing downstream multiplies.
    """

    def __init__(self, bias: torch.Tensor | None, out_features: int):
        super().__init__()
        self.out_features = out_features
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None and out_features else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_features == 0:
            return x[..., :0]
        out = x.new_zeros(*x.shape[:-1], self.out_features)
        return out + self.bias if self.bias is not None else out


class ElasticModel:
    """A Hugging Face model turned elastic in place."""

    def __init__(self, model: nn.Module, family: ModelFamily, space: SearchSpace):
        self.model, self.family, self.space = model, family, space
        prefix, layers = family.layer_list(model)
        parent_path, _, self._list_attr = prefix.rpartition(".")
        self._list_parent = model.get_submodule(parent_path) if parent_path else model
        self.layers: list[nn.Module] = list(layers)
        for layer in self.layers:
            for group in LINEAR_GROUPS:
                for rel in family.groups[group]:
                    parent_rel, _, attr = rel.rpartition(".")
                    parent = layer.get_submodule(parent_rel) if parent_rel else layer
                    if not isinstance(getattr(parent, attr), ElasticLinear):
                        setattr(parent, attr, ElasticLinear(getattr(parent, attr), self._blocks(group, getattr(parent, attr))))
            _own_head_settings(layer.get_submodule(family.attention), family)
        self.active = space.largest()

    def _blocks(self, group: str, linear: nn.Module) -> tuple[int, ...]:
        """The output blocks of a fused projection: Q|K|V when one linear holds the group; gate|up when a gated FFN's
        up linear is twice the FFN width (Phi-3)."""
        s, fused = self.space, len(self.family.groups[group]) == 1
        if group == "qkv" and fused:
            return s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.num_kv_heads * s.head_dim
        weight = linear.weight.T if not isinstance(linear, nn.Linear) else linear.weight
        if group == "ffn_up" and fused and weight.shape[0] == 2 * s.ffn_size:
            return s.ffn_size, s.ffn_size
        return ()

    def _linears(self, layer: nn.Module, group: str) -> list[ElasticLinear]:
        return [layer.get_submodule(rel) for rel in self.family.groups[group]]

    def activate(self, config: SubnetConfig) -> None:
        """Select a sub-network in place (no weights are copied)."""
        self.space.check(config)
        s = self.space
        for layer, choice in zip(self.layers, config.layers):
            q_width, kv_width = choice.heads * s.head_dim, choice.heads // s.group_size * s.head_dim
            qkv = self._linears(layer, "qkv")
            if len(qkv) == 1:
                qkv[0].narrow(q_width, kv_width, kv_width)
            else:
                q, k, v = qkv
                q.narrow(q_width), k.narrow(kv_width), v.narrow(kv_width)
            for o in self._linears(layer, "attn_out"):
                o.active_in = q_width
            for up in self._linears(layer, "ffn_up"):
                up.narrow(choice.ffn)
            for down in self._linears(layer, "ffn_down"):
                down.active_in = choice.ffn
            attention = layer.get_submodule(self.family.attention)
            for attrs, value in ((self.family.head_count_attributes, choice.heads), (self.family.kv_head_count_attributes, choice.heads // s.group_size),
                                 (self.family.head_width_attributes, q_width)):
                for attr in attrs:
                    owner, _, name = attr.rpartition(".")
                    setattr(_attribute(attention, owner), name, value)
        setattr(self._list_parent, self._list_attr, nn.ModuleList([self.layers[i] for i in config.kept()]))
        self.active = config

    def importance(self, batches: Iterable[dict[str, torch.Tensor]] | None = None) -> Importance:
        """Scores of every KV group, FFN neuron and (with ``batches``) layer of the full model: see ``importance``."""
        self.activate(self.space.largest())
        if batches is None:
            with torch.no_grad():
                return magnitude_importance(self.layers, self._linears, self.space)
        return measured_importance(self.model, self.layers, self._linears, self.space, batches)

    def reorder(self, scores: Importance) -> dict[str, Any]:
        """Permute heads (KV groups) and FFN neurons by ``scores``, most important first.

        The full model computes the same function afterwards; the returned report (sorted scores) is recorded.
        """
        self.activate(self.space.largest())
        s = self.space
        report: dict[str, Any] = {"measure": scores.measure, "calibration_tokens": scores.tokens, "layers": []}
        with torch.no_grad():
            for i, (layer, group_score, neuron) in enumerate(zip(self.layers, scores.groups, scores.neurons)):
                group_order = torch.argsort(group_score, descending=True, stable=True)
                kv_idx = (group_order[:, None] * s.head_dim + torch.arange(s.head_dim)).flatten()
                q_per_group = s.group_size * s.head_dim
                q_idx = (group_order[:, None] * q_per_group + torch.arange(q_per_group)).flatten()
                qkv = self._linears(layer, "qkv")
                qkv[0].permute_outputs([q_idx, kv_idx, kv_idx] if len(qkv) == 1 else q_idx)
                if len(qkv) == 3:
                    qkv[1].permute_outputs(kv_idx)
                    qkv[2].permute_outputs(kv_idx)
                for o in self._linears(layer, "attn_out"):
                    o.permute_inputs(q_idx)
                ffn_order = torch.argsort(neuron, descending=True, stable=True)
                for up in self._linears(layer, "ffn_up"):
                    up.permute_outputs(ffn_order)
                for down in self._linears(layer, "ffn_down"):
                    down.permute_inputs(ffn_order)
                entry = {"head_group_scores": group_score[group_order].tolist(), "head_group_order": group_order.tolist(),
                         "ffn_scores_top8": neuron[ffn_order][:8].tolist(), "ffn_scores_bottom8": neuron[ffn_order][-8:].tolist()}
                if scores.layer_influence is not None:
                    entry["block_influence"] = scores.layer_influence[i]
                report["layers"].append(entry)
        return report

    def drop_order(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """The order depth choices drop layers in, measured on ``batches`` (``importance.greedy_drop_order``)."""
        s = self.space

        def outputs_without(dropped: set[int]) -> list[torch.Tensor]:
            self.activate(SubnetConfig(layers=[LayerChoice(keep=i not in dropped, heads=max(s.head_choices), ffn=max(s.ffn_choices))
                                               for i in range(s.num_layers)]))
            with torch.inference_mode():
                return [self.model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches]

        was_training = self.model.training
        self.model.eval()
        try:
            order, costs = greedy_drop_order(outputs_without, s.num_layers, max(s.min_layers, 1), [b.get("attention_mask") for b in batches])
        finally:
            self.activate(s.largest())
            self.model.train(was_training)
        return {"drop_order": order, "drop_kl": costs,
                "drop_measure": "greedy: each time the layer whose removal moves the output distribution least (mean KL from the full model)"}

    def extract(self, copy: bool = True) -> nn.Module:
        """A dense model of the active sub-network: plain ``nn.Linear`` layers of the active sizes.

        ``copy=False`` densifies this model itself (used when rebuilding a saved sub-network's structure).
        """
        model = copying.deepcopy(self.model) if copy else self.model
        for layer in self.family.layer_list(model)[1]:  # holds only the kept layers, in order
            _densify(layer)
        return model


def _attribute(obj: Any, dotted: str) -> Any:
    for name in filter(None, dotted.split(".")):
        obj = getattr(obj, name)
    return obj


def _own_head_settings(attention: nn.Module, family: ModelFamily) -> None:
    """Give a layer's attention its own copy of a settings object it reads head counts from (Phi-3 reads the query
    head count from the model's config, which every layer shares), so each layer's count can differ."""
    for attr in family.head_count_attributes + family.kv_head_count_attributes + family.head_width_attributes:
        owner = attr.rpartition(".")[0]
        if owner and "." not in owner:
            setattr(attention, owner, copying.copy(getattr(attention, owner)))


def _densify(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, ElasticLinear):
            setattr(module, name, child.dense())
        else:
            _densify(child)
