"""Analytic cost of any sub-network: parameters, non-embedding parameters (the LiteTransformerSearch
perplexity proxy for decoders) and multiply-accumulates for one sequence."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from torch import nn

from tailorfit.pipeline.supernet.elastic import ElasticModel, SubnetConfig


class CostModel(BaseModel):
    """Constants measured once from the full model; everything else is arithmetic on the sub-network config."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden: int
    head_dim: int
    group_size: int
    up_projections: int  # 2 for gated FFNs (gate and up, apart or fused), else 1
    biases: dict[str, bool]  # qkv, attn_out, ffn_up, ffn_down
    layer_other_params: int  # norms and anything else per layer that does not shrink
    fixed_params: int  # embeddings, final norm, head
    embedding_params: int
    head_macs_per_token: int  # LM head: applied to every token
    head_macs_per_sequence: int  # pooler / classifier: applied once

    @classmethod
    def measure(cls, elastic: ElasticModel) -> "CostModel":
        elastic.activate(elastic.space.largest())
        s, fam, model = elastic.space, elastic.family, elastic.model
        layer = elastic.layers[0]
        linear = {g: [layer.get_submodule(r) for r in fam.groups[g]] for g in fam.groups}
        linear_params = sum(p.numel() for mods in linear.values() for m in mods for p in m.parameters())
        layer_params = sum(p.numel() for p in layer.parameters())
        total = sum(p.numel() for p in model.parameters())
        head_tok = head_seq = 0
        layer_names = {n for n, _ in model.named_modules() if n.startswith(fam.layer_list(model)[0] + ".")}
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and name not in layer_names:
                if fam.kind == "decoder":
                    head_tok += m.in_features * m.out_features
                else:
                    head_seq += m.in_features * m.out_features
        return cls(
            hidden=s.hidden_size, head_dim=s.head_dim, group_size=s.group_size, up_projections=sum(len(m.blocks) for m in linear["ffn_up"]),
            biases={g: mods[0].bias is not None for g, mods in linear.items()},
            layer_other_params=layer_params - linear_params, fixed_params=total - layer_params * len(elastic.layers),
            embedding_params=fam.embedding_params(model), head_macs_per_token=head_tok, head_macs_per_sequence=head_seq,
        )

    def _layer_linear(self, heads: int, ffn: int) -> tuple[int, int]:
        """(weights, biases) of one layer's linears."""
        h, q, kv = self.hidden, heads * self.head_dim, heads // self.group_size * self.head_dim
        b = self.biases
        weights = h * (q + 2 * kv) + q * h + self.up_projections * h * ffn + ffn * h
        biases = (q + 2 * kv) * b["qkv"] + h * b["attn_out"] + self.up_projections * ffn * b["ffn_up"] + h * b["ffn_down"]
        return weights, biases

    def params(self, config: SubnetConfig) -> int:
        layers = sum(sum(self._layer_linear(c.heads, c.ffn)) + self.layer_other_params for c in config.layers if c.keep)
        return self.fixed_params + layers

    def non_embedding_params(self, config: SubnetConfig) -> int:
        return self.params(config) - self.embedding_params

    def macs(self, config: SubnetConfig, seq_len: int) -> int:
        """Multiply-accumulates of the linears and attention products for one sequence of ``seq_len`` tokens."""
        total = self.head_macs_per_sequence + self.head_macs_per_token * seq_len
        for c in config.layers:
            if c.keep:
                weights, _ = self._layer_linear(c.heads, c.ffn)
                total += weights * seq_len + 2 * seq_len * seq_len * c.heads * self.head_dim  # QK^T and AV
        return total
