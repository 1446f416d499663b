"""The search space of a super-network and the sub-network configs in it (plain data: no torch)."""
from __future__ import annotations

import hashlib
import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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

    def smallest(self) -> SubnetConfig:
        """Fewest layers, fewest heads, narrowest FFN. The kept layers are spread evenly and include the last:
        on all-MiniLM-L6-v2, keeping only the first layers saturates the pooler's tanh and no amount of
        sandwich training moved the classifier off chance (measured), whereas dropping middle layers is mild."""
        keep = [True] * self.num_layers
        if self.skippable:
            n, k = self.num_layers, self.min_layers
            kept = {round(i * (n - 1) / (k - 1)) for i in range(k)} if k > 1 else {n - 1}
            keep = [i in kept for i in range(n)]
        return SubnetConfig(layers=[LayerChoice(keep=k, heads=min(self.head_choices), ffn=min(self.ffn_choices)) for k in keep])

    def sample(self, rng: random.Random) -> SubnetConfig:
        depth = rng.randint(self.min_layers, self.num_layers) if self.skippable else self.num_layers
        kept = set(rng.sample(range(self.num_layers), depth))
        return SubnetConfig(layers=[
            LayerChoice(keep=i in kept, heads=rng.choice(self.head_choices), ffn=rng.choice(self.ffn_choices)) for i in range(self.num_layers)
        ])


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
