"""extract: slices one sub-network out of a super-network into a dense standalone model.

Consumes: ``SuperNet``. Produces: ``HFModel`` — a folder with ``architecture.json`` (the sub-network, its
search space, the base config, its params / MACs), ``model.safetensors`` and the tokenizer; it reloads with
tailorfit's loader without the super-network and lowers through every target. Where the sub-network is
uniform enough for Hugging Face's own classes, its ``config.json`` also loads with ``from_pretrained``.
Post-condition: the dense model's outputs equal the super-network's active sub-network (recorded).
"""
from __future__ import annotations

import json
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from tailorfit.pipeline.contract import Facts, Pass, PassConfig, PassContext, PortFacts
from tailorfit.pipeline.supernet.cost import CostModel
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.models.handles import HFModel, SuperNet
from tailorfit.pipeline.models.loading import ARCHITECTURE, ExportWrapper, example_inputs, family_of, input_names, load_preprocessor
from tailorfit.pipeline.supernet.space import LayerChoice, SearchSpace, SubnetConfig, subnet_id

from .supernet import load_supernet


class UniformSubnet(BaseModel):
    """The same choice in every kept layer; ``depth`` layers kept by the super-network's drop order."""

    model_config = ConfigDict(extra="forbid")
    depth: int | None = Field(default=None, ge=1, description="layers kept (default: all); the least influential are dropped first")
    heads: int | None = Field(default=None, ge=1, description="query heads per layer (default: all)")
    ffn: int | None = Field(default=None, ge=0, description="FFN width per layer (default: all)")

    def resolve(self, space: SearchSpace) -> SubnetConfig:
        keep = space.kept_at_depth(self.depth or space.num_layers)
        heads, ffn = self.heads or max(space.head_choices), max(space.ffn_choices) if self.ffn is None else self.ffn
        return SubnetConfig(layers=[LayerChoice(keep=k, heads=heads, ffn=ffn) for k in keep])


class ExtractConfig(PassConfig):
    subnet: Literal["largest", "smallest"] | SubnetConfig | UniformSubnet = Field(
        description="'largest', 'smallest', {depth, heads, ffn} (uniform, depth by the drop order) or {layers: [{keep, heads, ffn}, ...]}")
    seq_len: int = Field(default=128, ge=1, description="sequence length the recorded MACs are computed for")
    name: str | None = Field(default=None, description="model name for candidate ids (default: <source name>-<sub-network id>)")


class Extract(Pass):
    name = "extract"
    version = 2  # 2: the smallest sub-network keeps evenly spaced layers, the last included
    Config = ExtractConfig
    packages = ("torch", "transformers", "safetensors")
    portable = True

    def ensures(self, inputs: PortFacts) -> Facts:
        """The super-network's facts, with the layer count of the sub-network when the recipe names it."""
        facts = {k: v for k, v in inputs["supernet"].items() if k not in ("num_layers", "dims")}
        if isinstance(self.config.subnet, SubnetConfig):
            facts["num_layers"] = len(self.config.subnet.kept())
        elif isinstance(self.config.subnet, UniformSubnet) and self.config.subnet.depth:
            facts["num_layers"] = self.config.subnet.depth
        return facts

    def _config(self, supernet: SuperNet) -> SubnetConfig:
        chosen = self.config.subnet
        if chosen == "largest":
            return supernet.space.largest()
        if chosen == "smallest":
            return supernet.space.smallest()
        if isinstance(chosen, UniformSubnet):
            chosen = chosen.resolve(supernet.space)
        supernet.space.check(chosen)
        return chosen

    def run(self, ctx: PassContext, supernet: SuperNet) -> HFModel:
        from safetensors.torch import save_model

        subnet = self._config(supernet)
        elastic = load_supernet(supernet)
        cost = CostModel.model_validate_json((supernet.path / "cost_model.json").read_text())
        elastic.activate(subnet)
        dense = elastic.extract()
        names = input_names(elastic.model, supernet.source)
        example = example_inputs(supernet.source, elastic.model, names)
        with torch.inference_mode():
            drift = float((ExportWrapper(dense, names).eval()(*example) - ExportWrapper(elastic.model, names).eval()(*example)).abs().max())
        if drift > 1e-5:
            raise TailorfitError(f"the extracted sub-network differs from the super-network's by {drift:.2e}", "report this as a bug with --debug output")
        out = ctx.work_dir / "model"
        out.mkdir()
        save_model(dense, str(out / "model.safetensors"))
        load_preprocessor(supernet.source).save_pretrained(out)
        base_config = elastic.model.config.to_dict()
        architecture = {
            "subnet": subnet.model_dump(), "space": supernet.space.model_dump(), "base_config": base_config,
            "params": cost.params(subnet), "non_embedding_params": cost.non_embedding_params(subnet),
            "macs": cost.macs(subnet, self.config.seq_len), "macs_seq_len": self.config.seq_len, "max_abs_diff_vs_supernet": drift,
        }
        (out / ARCHITECTURE).write_text(json.dumps(architecture, indent=1))
        plain = _plain_config(base_config, subnet, supernet)
        (out / "config.json").write_text(json.dumps(plain or base_config, indent=1))
        ctx.log.info("sub-network %s: %d params (%.1f%% of the largest), %s", subnet_id(subnet), architecture["params"],
                     100 * architecture["params"] / cost.params(supernet.space.largest()), "from_pretrained-compatible" if plain else "tailorfit loader only")
        return supernet.source.model_copy(update={"path": out, "name": self.config.name or f"{supernet.source.name}-{subnet_id(subnet)}"})


def _plain_config(base: dict[str, Any], subnet: SubnetConfig, supernet: SuperNet) -> dict[str, Any] | None:
    """A Hugging Face config for sub-networks its classes can express: same heads and FFN width in every kept layer."""
    kept = [subnet.layers[i] for i in subnet.kept()]
    if len({(c.heads, c.ffn) for c in kept}) != 1 or kept[0].ffn == 0:
        return None
    heads, ffn = kept[0].heads, kept[0].ffn
    space, keys = supernet.space, family_of(supernet.source).config_keys
    plain = {**base, keys.layers: len(kept), keys.ffn: ffn}
    if heads != space.num_heads:
        if keys.head_dim is None or keys.kv_heads is None:  # the class derives the head size from hidden / heads
            return None
        plain.update({keys.heads: heads, keys.kv_heads: heads // space.group_size, keys.head_dim: space.head_dim})
    if isinstance(base.get("layer_types"), list):  # per-layer attention kinds (sliding or full) of the kept layers
        plain["layer_types"] = [base["layer_types"][i] for i in subnet.kept()]
    return plain
