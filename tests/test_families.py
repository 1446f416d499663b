"""Family conformance: every registered family loads, becomes a super-network, extracts smaller sub-networks, lowers
and quantizes with a mixed policy. A new family needs its module in pipeline/families/ and one builder line in TINY;
a model type added to an existing family, a line too when its model differs beyond the layout (norms, attention)."""
from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from tailorfit.pipeline import run_pipeline
from tailorfit.pipeline.families import FAMILIES, family_for
from tailorfit.pipeline.models.handles import HFModel
from tailorfit.pipeline.models.loading import ExportWrapper, auto_class, example_inputs, input_names, layer_count, load_torch_model

# model type -> (vocabulary size -> a seeded random model of 3 layers, width 32, 4 heads, FFN 64: about 100k parameters)
TINY = {
    "bert": lambda vocab: tf.BertForSequenceClassification(tf.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, num_labels=2)),
    "vit": lambda vocab: tf.ViTForImageClassification(tf.ViTConfig(image_size=8, patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, num_labels=10)),
    "llama": lambda vocab: tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, eos_token_id=5, pad_token_id=0, bos_token_id=5)),
    "gpt2": lambda vocab: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_inner=64, n_positions=64, eos_token_id=5, bos_token_id=5)),
    "distilbert": lambda vocab: tf.DistilBertForSequenceClassification(tf.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=3, n_heads=4, hidden_dim=64, max_position_embeddings=64, num_labels=2)),
    "gemma": lambda vocab: tf.GemmaForCausalLM(tf.GemmaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64, eos_token_id=5, pad_token_id=0, bos_token_id=5)),
    # an explicit head size, soft-capped logits, sliding and full attention layers (kept per layer in a sub-network's
    # config). A window shorter than the input lowers wrongly to ONNX Runtime (0.19 off; lower refuses it): 32 here
    "gemma2": lambda vocab: tf.Gemma2ForCausalLM(tf.Gemma2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64, sliding_window=32, eos_token_id=5, pad_token_id=0, bos_token_id=5)),
    # per-head RMS norms of queries and keys (one weight shared by the heads), local and global layers with their own rope
    "gemma3_text": lambda vocab: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64, sliding_window=32, eos_token_id=5, pad_token_id=0, bos_token_id=5)),
    # Q|K|V fused in one linear (grouped-query blocks of unequal size), gate|up in another
    "phi3": lambda vocab: tf.Phi3ForCausalLM(tf.Phi3Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, eos_token_id=5, pad_token_id=0, bos_token_id=5)),
}
DATA = {"text-classification": "sentences_csv", "causal-lm": "text_jsonl", "image-classification": "digits_jsonl"}  # fixtures
SUBNET = {"layers": [{"heads": 2, "ffn": 32}, {"keep": False, "heads": 4, "ffn": 64}, {"heads": 4, "ffn": 48}]}  # fewer layers, heads, FFN
UNIFORM = {"layers": [{"heads": 4, "ffn": 32}, {"keep": False, "heads": 4, "ffn": 64}, {"heads": 4, "ffn": 32}]}  # expressible in config.json
POLICY = {"layers": {"0.qkv": "fp32", "1.ffn_down": "fp32"}}  # of the two kept layers; the rest int8


def test_every_registered_family_has_a_tiny_model():
    assert {family_for(t).name for t in TINY} == {f.name for f in FAMILIES}


def _folder(name: str, save_tiny):
    family = family_for(name)
    folder = save_tiny(f"family-{name}", "bert" if family.kind == "encoder" else "plain", TINY[name])
    if family.modality == "image":  # the digits fixture's 0..16 pixels, rescaled and normalised
        tf.ViTImageProcessorPil(size={"height": 8, "width": 8}, do_resize=False, rescale_factor=1 / 16, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder


def _recipe(name: str, folder, data) -> dict:
    task = family_for(name).tasks[0]
    return {
        "name": f"family-{name}", "threads": 2,
        "steps": [
            {"id": "model", "pass": "load", "config": {"path": str(folder), "task": task, "name": name}},
            {"id": "data", "pass": "dataset", "config": {"path": str(data), "task": task}},
            {"id": "super", "pass": "supernet", "config": {"ffn_step": 16, "head_choices": [2, 4]}},
            {"id": "largest", "pass": "extract", "config": {"subnet": "largest"}},
            {"id": "uniform", "pass": "extract", "inputs": {"supernet": "super"}, "config": {"subnet": UNIFORM}},
            {"id": "sub", "pass": "extract", "inputs": {"supernet": "super"}, "config": {"subnet": SUBNET}},
            {"id": "ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
            {"id": "ov-q", "pass": "quantize", "config": {"policy": POLICY, "calibration_samples": 4, "max_length": 16}},
            {"id": "ort", "pass": "lower", "inputs": {"model": "sub"}, "config": {"target": "onnxruntime-cpu"}},
        ],
    }


@torch.inference_mode()
def _outputs(model, handle: HFModel) -> torch.Tensor:
    names = input_names(model, handle)
    return ExportWrapper(model, names).eval()(*example_inputs(handle, model, names))


@pytest.mark.parametrize("name", list(TINY))
def test_family_conformance(name, save_tiny, request, tmp_path):
    family = family_for(name)
    folder = _folder(name, save_tiny)
    result = run_pipeline(_recipe(name, folder, request.getfixturevalue(DATA[family.tasks[0]])), out=tmp_path, quiet=True)
    source = result.outputs["model"]
    original = auto_class(family.tasks[0]).from_pretrained(folder).eval()

    largest = result.outputs["largest"]
    assert (_outputs(load_torch_model(largest), largest) - _outputs(original, source)).abs().max() <= 1e-5

    # a uniform sub-network's config.json, written with the family's keys, loads in Hugging Face's own class
    uniform = result.outputs["uniform"]
    assert json.loads((uniform.path / "config.json").read_text())[family.config_keys.layers] == 2
    theirs = auto_class(family.tasks[0]).from_pretrained(uniform.path).eval()
    assert (_outputs(theirs, uniform) - _outputs(load_torch_model(uniform), uniform)).abs().max() <= 1e-5

    sub = result.outputs["sub"]
    arch = json.loads((sub.path / "architecture.json").read_text())
    dense = load_torch_model(sub)
    assert layer_count(sub.path) == len(family.layer_list(dense)[1]) == 2
    assert arch["max_abs_diff_vs_supernet"] <= 1e-5
    assert arch["params"] == sum(p.numel() for p in dense.parameters()) < sum(p.numel() for p in original.parameters())

    assert result.outputs["ov"].metrics["lowering_max_abs_diff"] <= 1e-4
    assert result.outputs["ort"].metrics["lowering_max_abs_diff"] <= 1e-4

    quantized = result.outputs["ov-q"]
    assert quantized.precision == "mixed" and set(quantized.policy) == {f"{i}.{g}" for i in range(2) for g in family.groups} | {"head"}
    report = json.loads(quantized.reports["precision"].read_text())
    linears = [r for r in report["nodes"] if r["linear"]]
    kept_float = [r for r in linears if r["policy"] == "fp32"]
    assert len(kept_float) == len(family.groups["qkv"]) + len(family.groups["ffn_down"])
    assert all(r["runtime"] == "fp32" for r in kept_float) and report["fp32_linears"] == len(kept_float)
    assert all(r["runtime"] in ("int8", None) for r in linears if r["policy"] == "int8")
    assert report["int8_linears"] >= len(linears) - len(kept_float) - 1  # OpenVINO may fuse one node's name away
