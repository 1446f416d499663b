"""Families found by structure: a tiny transformer whose modules and classes no family module knows (registered with
transformers' Auto classes in this process, as a user's own architecture would be) is read off its structure, goes
through super-network, search and extraction; a structure that cannot be read is refused with what was seen (one that
does not hold on its weights, MPNet's, is in test_any_architecture.py)."""
from __future__ import annotations

import sqlite3

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from tailorfit.pipeline import TailorfitError, run_pipeline
from tailorfit.pipeline.families import find_family
from tailorfit.pipeline.families.discovery import discover_family


class RenamedConfig(tf.PretrainedConfig):
    model_type = "renamed-encoder"

    def __init__(self, vocab_size=64, dim=32, n_layers=3, n_heads=4, hidden_dim=64, max_position_embeddings=64, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.dim, self.n_layers, self.n_heads, self.hidden_dim = vocab_size, dim, n_layers, n_heads, hidden_dim
        self.max_position_embeddings, self.initializer_range = max_position_embeddings, initializer_range


class Mixer(nn.Module):  # attention, reshaping by its stored head count
    def __init__(self, c: RenamedConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.wq, self.wk, self.wv, self.proj = (nn.Linear(c.dim, c.dim) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (w(x).view(b, t, self.n_heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        return self.proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, c: RenamedConfig):
        super().__init__()
        self.mixer, self.n1, self.n2 = Mixer(c), nn.LayerNorm(c.dim), nn.LayerNorm(c.dim)
        self.fc_in, self.fc_out = nn.Linear(c.dim, c.hidden_dim), nn.Linear(c.hidden_dim, c.dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.n1(x + self.mixer(x, mask))
        return self.n2(x + self.fc_out(F.gelu(self.fc_in(x))))


class RenamedForSequenceClassification(tf.PreTrainedModel):
    config_class = RenamedConfig

    def __init__(self, c: RenamedConfig):
        super().__init__(c)
        self.tokens, self.places = nn.Embedding(c.vocab_size, c.dim), nn.Embedding(c.max_position_embeddings, c.dim)
        self.body = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.score = nn.Linear(c.dim, c.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False, **_):
        mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).bool()[:, None, None, :]
        x = self.tokens(input_ids) + self.places(torch.arange(input_ids.shape[1]))
        states = [x]
        for block in self.body:
            x = block(x, mask)
            states.append(x)
        logits = self.score(x[:, 0])
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=tuple(states) if output_hidden_states else None)


tf.AutoConfig.register(RenamedConfig.model_type, RenamedConfig)
tf.AutoModelForSequenceClassification.register(RenamedConfig, RenamedForSequenceClassification)


@pytest.fixture(scope="module")
def renamed(save_tiny):
    assert find_family(RenamedConfig.model_type) is None
    return save_tiny("renamed", "bert", lambda vocab: RenamedForSequenceClassification(RenamedConfig(vocab_size=vocab, num_labels=2)))


def test_the_structure_is_read_off_the_modules():
    family = discover_family(RenamedForSequenceClassification(RenamedConfig(num_labels=2)), RenamedConfig().to_dict(), "text-classification", ["input_ids", "attention_mask"])
    assert family.layers == "body" and family.attention == "mixer" and family.head_count_attributes == ("n_heads",)
    assert family.groups == {"qkv": ("mixer.wq", "mixer.wk", "mixer.wv"), "attn_out": ("mixer.proj",), "ffn_up": ("fc_in",), "ffn_down": ("fc_out",)}
    assert (family.config_keys.layers, family.config_keys.hidden, family.config_keys.heads, family.config_keys.ffn) == ("n_layers", "dim", "n_heads", "hidden_dim")


def test_a_found_family_goes_through_supernet_search_and_extraction(renamed, sentences_csv, tmp_path):
    tiny = {"max_length": 24, "batch_size": 16}
    recipe = {"name": "renamed", "seed": 0, "threads": 2, "steps": [
        {"id": "model", "pass": "load", "config": {"path": str(renamed), "task": "text-classification", "name": "renamed"}},
        {"id": "data", "pass": "dataset", "config": {"path": str(sentences_csv)}},
        {"id": "ft", "pass": "finetune", "config": {"max_steps": 40, "learning_rate": 3e-3, **tiny}},
        {"id": "super", "pass": "supernet", "config": {"ffn_step": 16, "min_layers": 2}},
        {"id": "sandwich", "pass": "supernet-finetune", "config": {"max_steps": 6, "learning_rate": 1e-3, "random_subnets": 0, **tiny}},
        {"id": "search", "pass": "search", "config": {"budget": 4, "initial": 4, "batch": 2, "latency_runs": 10, "sequence_length": 16, "calibration_samples": 8, "estimate": False}},
        {"id": "pick", "pass": "select", "config": {"rule": "fastest", "max_accuracy_drop": 100.0}},
        {"id": "pick-ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
        {"id": "pick-q", "pass": "quantize", "config": {"policy": "selected", "calibration_samples": 8, "max_length": 24}},
    ]}
    result = run_pipeline(recipe, out=tmp_path, quiet=True)
    model = result.outputs["model"]
    assert model.family == "found-renamed-encoder" and model.family_spec["layers"] == "body" and not model.notes
    search = result.outputs["search"]
    measured = sqlite3.connect(search.path / "evaluations.sqlite").execute("SELECT COUNT(*) FROM candidates WHERE role = 'search'").fetchone()[0]
    assert search.front and measured >= 4
    pick = result.outputs["pick"]
    assert pick.family_spec == model.family_spec and pick.selection is not None  # the family travels with the model
    assert result.outputs["pick-ov"].metrics["lowering_max_abs_diff"] < 1e-3
    assert result.outputs["pick-q"].precision in ("int8", "mixed", "fp32")


def test_an_unreadable_structure_is_refused_with_what_was_seen():
    class TwoStacks(nn.Module):  # two lists of identical blocks of the same length: which one holds the layers?
        def __init__(self):
            super().__init__()
            self.left = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
            self.right = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    with pytest.raises(TailorfitError, match="2 lists of 3 identical blocks"):
        discover_family(TwoStacks(), {"model_type": "two-stacks"}, "text-classification", ["input_ids"])
