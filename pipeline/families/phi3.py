"""Phi-3: LLaMA's layout with Q|K|V fused in one linear (grouped-query blocks of unequal size) and gate|up fused in
another. Its attention slices the fused output by the config's query-head count and its own KV-head count, so both
follow a layer's choice."""
from __future__ import annotations

from tailorfit.pipeline.families import ConfigKeys, ModelFamily, register

FAMILY = register(ModelFamily(
    name="phi3", model_types=("phi3",), layers="layers",
    groups={"qkv": ("self_attn.qkv_proj",), "attn_out": ("self_attn.o_proj",), "ffn_up": ("mlp.gate_up_proj",), "ffn_down": ("mlp.down_proj",)},
    kind="decoder", modality="text", attention="self_attn",
    config_keys=ConfigKeys(layers="num_hidden_layers", hidden="hidden_size", heads="num_attention_heads", ffn="intermediate_size", kv_heads="num_key_value_heads"),
    head_count_attributes=("config.num_attention_heads",), kv_head_count_attributes=("num_key_value_heads",),
))
