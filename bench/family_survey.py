"""Which Hugging Face architectures tailorfit can prune: ``python -m bench.family_survey`` prints a markdown table.

For each model type, a tiny random model of it (2 layers, width 32, 4 heads, FFN 64) is built from transformers' own
classes, its family is read off its structure as ``load`` would (``families/discovery.py``) and checked on its
weights as ``load`` does (``loading.structure_fails``). A registered family is checked the same way. Runs in about a
minute on 2 cores; needs no network.
"""
from __future__ import annotations

import logging
import warnings

import torch

from tailorfit.pipeline.families import find_family
from tailorfit.pipeline.families.discovery import discover_family
from tailorfit.pipeline.models.loading import auto_class, structure_fails

_SIZES = dict(  # every common spelling of the same tiny shape: each config class takes the keys it knows
    vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
    n_embd=32, n_layer=2, n_head=4, n_inner=64, d_model=32, num_layers=2, num_heads=4, d_ff=64, ffn_dim=64, n_positions=64,
    num_key_value_heads=2, embedding_size=32, pad_token_id=0,
)
ENCODERS = ("albert", "bert", "convbert", "data2vec-text", "deberta", "deberta-v2", "distilbert", "electra", "ernie", "esm", "ibert",
            "megatron-bert", "mobilebert", "modernbert", "mpnet", "roberta", "roformer", "squeezebert", "xlm-roberta")
DECODERS = ("bloom", "codegen", "cohere", "gemma", "gemma2", "gpt2", "gpt_neox", "gptj", "granite", "llama", "mistral", "mixtral", "olmo",
            "olmo2", "opt", "phi", "phi3", "qwen2", "qwen3", "stablelm", "starcoder2")


def survey_one(model_type: str, task: str) -> tuple[str, str]:
    """(how tailorfit treats the model type, the evidence)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **_SIZES)
    torch.manual_seed(0)
    net = auto_class(task).from_config(config).eval()
    family = find_family(model_type)
    if family is None:
        try:
            family = discover_family(net, config.to_dict(), task, ["input_ids", "attention_mask"])
        except Exception as exc:  # noqa: BLE001 - the survey reports whatever stops the reading
            return "runs whole: structure not readable", getattr(exc, "problem", str(exc)).rpartition(": ")[2][:120]
    ids = torch.randint(1, 100, (2, 12))
    why = structure_fails(net, family, config.to_dict(), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"])
    kind = "registered family" if find_family(model_type) else "found by structure"
    if why:
        return f"runs whole: {kind} does not hold", why[:120]
    return f"prunable: {kind}", f"layers `{family.layers}`, Q/K/V {len(family.groups['qkv'])}, FFN up {len(family.groups['ffn_up'])}"


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    print("| model type | task | tailorfit | evidence |\n| --- | --- | --- | --- |")
    for task, types in (("text-classification", ENCODERS), ("causal-lm", DECODERS)):
        for model_type in types:
            verdict, evidence = survey_one(model_type, task)
            print(f"| {model_type} | {task} | {verdict} | {evidence.replace('|', '/')} |", flush=True)


if __name__ == "__main__":
    main()
