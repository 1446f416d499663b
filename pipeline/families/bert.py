"""BERT and the encoders that share its module layout: RoBERTa, XLM-RoBERTa, CamemBERT."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tailorfit.pipeline.families import ConfigKeys, ModelFamily, register


class BertFamily(ModelFamily):
    def input_names(self, config: Mapping[str, Any]) -> list[str]:
        # segment ids matter only where the model learned more than one segment (RoBERTa's type_vocab_size is 1)
        return [*self.inputs, "token_type_ids"] if config.get("type_vocab_size", 0) > 1 else list(self.inputs)


FAMILY = register(BertFamily(
    name="bert", model_types=("bert", "roberta", "xlm-roberta", "camembert"), layers="encoder.layer",
    groups={
        "qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
        "attn_out": ("attention.output.dense",),
        "ffn_up": ("intermediate.dense",),
        "ffn_down": ("output.dense",),
    },
    kind="encoder", modality="text", attention="attention.self",
    config_keys=ConfigKeys(layers="num_hidden_layers", hidden="hidden_size", heads="num_attention_heads", ffn="intermediate_size"),
    head_count_attributes=("num_attention_heads",), head_width_attributes=("all_head_size",),
))
