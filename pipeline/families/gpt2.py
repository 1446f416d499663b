"""GPT-2: fused Q|K|V in one Conv1D (weights stored transposed)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tailorfit.pipeline.families import ConfigKeys, ModelFamily, register


class GPT2Family(ModelFamily):
    def ffn_size(self, config: Mapping[str, Any]) -> int:
        # n_inner is null in most GPT-2 configs, meaning four times the width
        return int(config.get(self.config_keys.ffn) or 4 * config[self.config_keys.hidden])


FAMILY = register(GPT2Family(
    name="gpt2", model_types=("gpt2",), layers="h",
    groups={"qkv": ("attn.c_attn",), "attn_out": ("attn.c_proj",), "ffn_up": ("mlp.c_fc",), "ffn_down": ("mlp.c_proj",)},
    kind="decoder", modality="text", attention="attn",
    config_keys=ConfigKeys(layers="n_layer", hidden="n_embd", heads="n_head", ffn="n_inner"),
    head_count_attributes=("num_heads",), head_width_attributes=("split_size",),  # split_size cuts the fused output into Q, K, V
))
