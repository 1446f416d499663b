"""LLaMA and the decoders that share its module layout (gated FFN, grouped-query attention): Mistral, Qwen2, Qwen3, and
Gemma 1, 2 and 3 (text), whose extra norms (Gemma 3's per-head query and key norms share one weight across heads),
soft-capping, sliding windows and local/global rope sit outside the linears a search slices."""
from __future__ import annotations

from tailorfit.pipeline.families import ConfigKeys, ModelFamily, register

FAMILY = register(ModelFamily(
    name="llama", model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"), layers="layers",
    groups={
        "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "attn_out": ("self_attn.o_proj",),
        "ffn_up": ("mlp.gate_proj", "mlp.up_proj"),
        "ffn_down": ("mlp.down_proj",),
    },
    kind="decoder", modality="text", attention="self_attn",
    config_keys=ConfigKeys(
        layers="num_hidden_layers", hidden="hidden_size", heads="num_attention_heads", ffn="intermediate_size",
        kv_heads="num_key_value_heads", head_dim="head_dim",
    ),
))  # its attention reshapes by -1 and head_dim: no attribute follows the head count
