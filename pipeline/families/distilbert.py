"""DistilBERT: a six-layer distilled BERT with its own module names and config keys, and no segment ids."""
from __future__ import annotations

from tailorfit.pipeline.families import ConfigKeys, ModelFamily, register

FAMILY = register(ModelFamily(
    name="distilbert", model_types=("distilbert",), layers="transformer.layer",
    groups={
        "qkv": ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        "attn_out": ("attention.out_lin",),
        "ffn_up": ("ffn.lin1",),
        "ffn_down": ("ffn.lin2",),
    },
    kind="encoder", modality="text", attention="attention",
    config_keys=ConfigKeys(layers="n_layers", hidden="dim", heads="n_heads", ffn="hidden_dim"),
    # its forward reshapes by -1 and the fixed head size; n_heads is only kept consistent (dim is the model width, unchanged)
    head_count_attributes=("n_heads",),
))
