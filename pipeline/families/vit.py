"""Vision Transformer: BERT's encoder layout over image patches."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tailorfit.pipeline.families import ConfigKeys, ModelFamily, register

if TYPE_CHECKING:
    from torch import nn


class ViTFamily(ModelFamily):
    def embedding_params(self, model: nn.Module) -> int:
        # no token table: the patch projection (a convolution), the position table and the CLS token embed the input
        return sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in f".{n}")


FAMILY = register(ViTFamily(
    name="vit", model_types=("vit",), layers="encoder.layer",
    groups={
        "qkv": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        "attn_out": ("attention.output.dense",),
        "ffn_up": ("intermediate.dense",),
        "ffn_down": ("output.dense",),
    },
    kind="encoder", modality="image", attention="attention.attention",
    config_keys=ConfigKeys(layers="num_hidden_layers", hidden="hidden_size", heads="num_attention_heads", ffn="intermediate_size"),
    inputs=("pixel_values",),
    head_count_attributes=("num_attention_heads",), head_width_attributes=("all_head_size",),
))
