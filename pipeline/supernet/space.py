"""The search space of a super-network and the sub-network configs in it (plain data: no torch)."""
from __future__ import annotations

import hashlib
import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.families import family_for


class LayerChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    keep: bool = True
    heads: int = Field(ge=1, description="query heads; a multiple of the KV-group size for grouped-query attention")
    ffn: int = Field(ge=0, description="FFN width (0 removes the FFN block)")


class SubnetConfig(BaseModel):
    """One sub-network: a choice per layer of the super-network."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    layers: list[LayerChoice]

    def kept(self) -> list[int]:
        return [i for i, c in enumerate(self.layers) if c.keep]


class SearchSpace(BaseModel):
    """What a super-network can become. Head choices are query-head counts; widths are FFN neurons."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    head_choices: list[int]
    ffn_choices: list[int]
    min_layers: int = 1
    skippable: bool = True
    drop_order: list[int] = Field(default=[], description="layers in the order depth choices drop them (least influential first); empty: positional")

    @model_validator(mode="after")
    def _permutation(self) -> "SearchSpace":
        if self.drop_order and sorted(self.drop_order) != list(range(self.num_layers)):
            raise ValueError(f"drop_order must list each of the {self.num_layers} layers once")
        return self

    @property
    def group_size(self) -> int:
        """Query heads per KV head: heads are kept or dropped a whole group at a time."""
        return self.num_heads // self.num_kv_heads

    def check(self, config: SubnetConfig) -> None:
        if len(config.layers) != self.num_layers:
            raise TailorfitError(f"the sub-network lists {len(config.layers)} layers, the super-network has {self.num_layers}", "give one choice per layer")
        kept = config.kept()
        if len(kept) < max(self.min_layers, 1):
            raise TailorfitError(f"the sub-network keeps {len(kept)} layers, fewer than {max(self.min_layers, 1)}", "keep more layers")
        if len(kept) < self.num_layers and not self.skippable:
            raise TailorfitError("this search space does not allow skipping layers", "set keep: true for every layer")
        for i, c in enumerate(config.layers):
            if c.heads % self.group_size:
                raise TailorfitError(f"layer {i}: {c.heads} heads is not a multiple of the KV-group size {self.group_size}", f"use one of {self.head_choices}")
            if c.heads not in self.head_choices:
                raise TailorfitError(f"layer {i}: {c.heads} heads is not in the search space", f"use one of {self.head_choices}")
            if c.ffn not in self.ffn_choices:
                raise TailorfitError(f"layer {i}: FFN width {c.ffn} is not in the search space", f"use one of {self.ffn_choices}")

    def largest(self) -> SubnetConfig:
        return SubnetConfig(layers=[LayerChoice(heads=max(self.head_choices), ffn=max(self.ffn_choices))] * self.num_layers)

    def layer_drop_order(self) -> list[int]:
        """Which layers a sub-network of depth d drops: the first ``num_layers - d`` of this list.

        Measured (``drop_order``): the least influential first. Positional (none measured): the layers between an even
        spread of ``min_layers`` first, deepest first, then the spread itself except the last layer; on all-MiniLM-L6-v2
        keeping only the first layers saturates the pooler's tanh and no sandwich training moved the classifier off
        chance (measured), whereas dropping middle layers is mild."""
        if self.drop_order:
            return list(self.drop_order)
        n, k = self.num_layers, max(self.min_layers, 1)
        spread = {round(i * (n - 1) / (k - 1)) for i in range(k)} if k > 1 else {n - 1}
        return [i for i in reversed(range(n)) if i not in spread] + [i for i in reversed(range(n - 1)) if i in spread] + [n - 1]

    def kept_at_depth(self, depth: int) -> list[bool]:
        """Keep flags of a sub-network of ``depth`` layers (all of them when layers are not skippable)."""
        dropped = set(self.layer_drop_order()[: self.num_layers - depth]) if self.skippable else set()
        return [i not in dropped for i in range(self.num_layers)]

    def depths(self) -> list[int]:
        return list(range(max(self.min_layers, 1), self.num_layers + 1)) if self.skippable else [self.num_layers]

    def smallest(self, full_depth: bool = False) -> SubnetConfig:
        """Fewest layers (the least influential dropped; ``full_depth``: all of them), fewest heads, narrowest FFN."""
        keep = self.kept_at_depth(self.num_layers if full_depth else self.depths()[0])
        return SubnetConfig(layers=[LayerChoice(keep=k, heads=min(self.head_choices), ffn=min(self.ffn_choices)) for k in keep])

    def sample(self, rng: random.Random, full_depth: bool = False) -> SubnetConfig:
        """A random sub-network: a uniform depth (``full_depth``: all layers), then widths per layer."""
        keep = self.kept_at_depth(self.num_layers if full_depth else rng.choice(self.depths()))
        return SubnetConfig(layers=[LayerChoice(keep=k, heads=rng.choice(self.head_choices), ffn=rng.choice(self.ffn_choices)) for k in keep])


def model_dims(config: Any) -> dict[str, int]:
    """Layers, width, heads, KV heads, head size and FFN width of a Hugging Face config, read with its family's keys."""
    return family_for(config.model_type).dims(config.to_dict())


def default_space(config: Any, ffn_step: int = 64, min_layers: int | None = None) -> SearchSpace:
    """Heads: every quarter of the groups; FFN: every quarter of the width, rounded to ``ffn_step`` (INT4 group sizes divide it)."""
    return space_over(model_dims(config), ffn_step, min_layers)


def space_over(d: dict[str, int], ffn_step: int = 64, min_layers: int | None = None) -> SearchSpace:
    """``default_space`` for a model of dimensions ``d`` (``model_dims``), known before the model is loaded."""
    groups = d["num_kv_heads"]
    size = d["num_heads"] // groups
    head_choices = sorted({max(1, round(groups * f)) * size for f in (0.25, 0.5, 0.75, 1.0)})
    ffn_choices = sorted({max(ffn_step, round(d["ffn_size"] * f / ffn_step) * ffn_step) for f in (0.25, 0.5, 0.75)} | {d["ffn_size"]})
    return SearchSpace(**d, head_choices=head_choices, ffn_choices=ffn_choices, min_layers=min_layers or max(1, d["num_layers"] // 2))


def subnet_id(config: SubnetConfig) -> str:
    """A short stable id for a sub-network config (used in candidate names)."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:8]
