"""Super-networks on tiny BERT, LLaMA (grouped-query attention) and ViT models: equivalence, reordering, extraction, cost."""
from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import cli_run_command, kill_when
from tailorfit.pipeline import TailorfitError, run_pipeline
from tailorfit.pipeline.supernet.cost import CostModel
from tailorfit.pipeline.supernet.elastic import ElasticModel
from tailorfit.pipeline.families import family_for
from tailorfit.pipeline.supernet.space import LayerChoice, SubnetConfig, default_space


def _model(kind: str):
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if kind == "bert":
        cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, num_labels=2)
        return BertForSequenceClassification(cfg).eval()
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
        return LlamaForCausalLM(cfg).eval()
    if kind == "phi3":
        from transformers import Phi3Config, Phi3ForCausalLM

        cfg = Phi3Config(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                         rms_norm_eps=1e-6, pad_token_id=0)  # LLaMA's norm epsilon: the two compute the same from the same weights
        return Phi3ForCausalLM(cfg).eval()
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config(vocab_size=60, n_embd=32, n_layer=3, n_head=4, n_inner=128, n_positions=64)).eval()
    cfg = ViTConfig(image_size=8, patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, num_labels=3)
    return ViTForImageClassification(cfg).eval()


def _inputs(kind: str, batch: int = 2, seq: int = 9):
    g = torch.Generator().manual_seed(1)
    if kind == "vit":
        return {"pixel_values": torch.randn(batch, 3, 8, 8, generator=g)}
    ids = torch.randint(0, 60, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, seq - 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _elastic(kind: str):
    model = _model(kind)
    space = default_space(model.config, ffn_step=32, min_layers=1)
    return model, ElasticModel(model, family_for(model.config.model_type), space)


@torch.no_grad()
def _logits(model, inputs):
    return model(**inputs).logits


KINDS = ["bert", "llama", "vit", "gpt2", "phi3"]


@pytest.mark.parametrize("importance", ["magnitude", "activation"])
@pytest.mark.parametrize("kind", KINDS)
def test_largest_config_is_the_original_and_reordering_keeps_it(kind, importance):
    model = _model(kind)
    reference = _logits(model, _inputs(kind))
    model, elastic = _elastic(kind)
    assert torch.equal(_logits(model, _inputs(kind)), reference)
    scores = elastic.importance([_inputs(kind, batch=4)] if importance == "activation" else None)
    report = elastic.reorder(scores)
    if importance == "activation":
        assert scores.tokens > 0 and len(scores.layer_influence) == 3
        assert all(len(layer["head_group_order"]) == elastic.space.num_kv_heads for layer in report["layers"])
    assert (_logits(model, _inputs(kind)) - reference).abs().max() <= 1e-5
    if importance == "activation":
        depth = elastic.drop_order([_inputs(kind, batch=4)])
        assert sorted(depth["drop_order"]) == [0, 1, 2] and len(depth["drop_kl"]) == 2  # min_layers 1: two layers to rank
        assert (_logits(model, _inputs(kind)) - reference).abs().max() <= 1e-5  # measuring left the largest active
    narrow = elastic.space.smallest()
    elastic.activate(narrow)
    assert (_logits(model, _inputs(kind)) - reference).abs().max() > 1e-5  # a sub-network really is a different function
    elastic.activate(elastic.space.largest())
    assert (_logits(model, _inputs(kind)) - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_extracted_subnetworks_equal_the_active_ones(kind):
    model, elastic = _elastic(kind)
    elastic.reorder(elastic.importance([_inputs(kind)]))
    rng = random.Random(0)
    for config in [elastic.space.smallest()] + [elastic.space.sample(rng) for _ in range(4)]:
        elastic.activate(config)
        expected = _logits(model, _inputs(kind, batch=3, seq=7))
        dense = elastic.extract()
        assert not any(type(m).__name__ == "ElasticLinear" for m in dense.modules())
        assert (_logits(dense, _inputs(kind, batch=3, seq=7)) - expected).abs().max() <= 1e-5
        assert len(elastic.family.layer_list(dense)[1]) == len(config.kept())


def test_activation_importance_keeps_the_neurons_and_layers_that_compute_something():
    """Neurons with heavy weights that never fire rank first by magnitude and last on data; a layer made the identity
    is the first depth choices drop. The narrow sub-network of the measured ranking is the closer to the full model."""
    model = _model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[:64] *= 10  # heavy gates ...
            layer.mlp.up_proj.weight[:64] = 0  # ... of neurons whose output is always 0
        layer = model.model.layers[1]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()  # pre-norm residual block: the layer now passes its input through
    inputs = _inputs("llama", batch=4, seq=12)
    reference = _logits(model, inputs)
    half = SubnetConfig(layers=[LayerChoice(heads=4, ffn=64)] * 3)
    errors = {}
    for importance in ("magnitude", "activation"):
        net = copy.deepcopy(model)
        elastic = ElasticModel(net, family_for("llama"), default_space(net.config, ffn_step=32, min_layers=1))
        scores = elastic.importance([inputs] if importance == "activation" else None)
        elastic.reorder(scores)
        elastic.activate(half)
        errors[importance] = float((_logits(net, inputs) - reference).abs().max())
        if importance == "activation":
            depth = elastic.drop_order([inputs])
            assert depth["drop_order"][0] == 1 and depth["drop_kl"][0] < 1e-9 and scores.layer_influence[1] < 1e-6
            assert (scores.neurons[0][:64] == 0).all() and (scores.neurons[0][64:] > 0).all()
    assert errors["activation"] < 1e-5 < errors["magnitude"]  # the dropped half computed nothing


def test_grouped_query_heads_stay_in_whole_groups():
    model, elastic = _elastic("llama")
    space = elastic.space
    assert space.group_size == 2 and space.head_choices == [2, 4]
    with pytest.raises(TailorfitError, match="not a multiple of the KV-group size 2"):
        elastic.activate(SubnetConfig(layers=[LayerChoice(heads=3, ffn=128)] * 3))
    elastic.activate(SubnetConfig(layers=[LayerChoice(heads=2, ffn=64)] * 3))
    attn = elastic.layers[0].self_attn
    assert attn.q_proj.active_out == 2 * 8 and attn.k_proj.active_out == 1 * 8 and attn.v_proj.active_out == 8
    dense = elastic.extract()
    assert dense.model.layers[0].self_attn.q_proj.out_features == 16 and dense.model.layers[0].self_attn.k_proj.out_features == 8


@pytest.mark.parametrize("importance", ["magnitude", "activation"])
def test_a_phi3_sub_network_computes_what_the_same_llama_sub_network_does(importance):
    """Phi-3 is LLaMA with Q|K|V (blocks of unequal size under grouped-query attention) and gate|up each fused in one
    linear, and its attention slices by a head count read from the config every layer shares: given the same weights,
    the same sub-network of each must compute the same function, with each layer keeping its own heads and widths."""
    llama, phi3 = _model("llama"), _model("phi3")
    source = llama.state_dict()

    def fused(key: str, parts: tuple[str, ...]) -> torch.Tensor:
        prefix = key.rsplit(".", 2)[0]
        return torch.cat([source[f"{prefix}.{part}.weight"] for part in parts])

    phi3.load_state_dict({k: fused(k, ("q_proj", "k_proj", "v_proj")) if "qkv_proj" in k else fused(k, ("gate_proj", "up_proj")) if "gate_up_proj" in k
                          else source[k] for k in phi3.state_dict()})
    inputs = _inputs("llama")
    assert (_logits(phi3, inputs) - _logits(llama, inputs)).abs().max() <= 1e-5
    sub = SubnetConfig(layers=[LayerChoice(heads=2, ffn=32), LayerChoice(keep=False, heads=4, ffn=128), LayerChoice(heads=4, ffn=96)])
    elastic = {}
    for model in (llama, phi3):
        elastic[model] = ElasticModel(model, family_for(model.config.model_type), default_space(model.config, ffn_step=32, min_layers=1))
        elastic[model].reorder(elastic[model].importance([inputs] if importance == "activation" else None))
        elastic[model].activate(sub)
    expected = _logits(llama, inputs)
    assert (_logits(llama, inputs) - _logits(_model("llama"), inputs)).abs().max() > 1e-3  # the sub-network is another function
    assert (_logits(phi3, inputs) - expected).abs().max() <= 1e-5
    dense = elastic[phi3].extract()
    assert [layer.self_attn.qkv_proj.out_features for layer in dense.model.layers] == [32, 64]  # 2 query heads + 2 x 1 KV head, then 4 + 2 x 2, of 8
    assert [layer.mlp.gate_up_proj.out_features for layer in dense.model.layers] == [64, 192]
    assert (_logits(dense, inputs) - expected).abs().max() <= 1e-5


def test_bad_subnet_configs_are_rejected():
    _, elastic = _elastic("bert")
    with pytest.raises(TailorfitError, match="FFN width 100 is not in the search space"):
        elastic.activate(SubnetConfig(layers=[LayerChoice(heads=4, ffn=100)] * 3))
    with pytest.raises(TailorfitError, match="keeps 0 layers"):
        elastic.activate(SubnetConfig(layers=[LayerChoice(keep=False, heads=4, ffn=128)] * 3))
    with pytest.raises(TailorfitError, match="lists 2 layers"):
        elastic.activate(SubnetConfig(layers=[LayerChoice(heads=4, ffn=128)] * 2))


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2", "phi3"])
def test_analytic_cost_matches_a_counted_forward(kind):
    model, elastic = _elastic(kind)
    cost = CostModel.measure(elastic)
    rng = random.Random(3)
    seq = 10
    for config in [elastic.space.largest(), elastic.space.smallest(), elastic.space.sample(rng), elastic.space.sample(rng)]:
        elastic.activate(config)
        dense = elastic.extract()
        assert cost.params(config) == sum(p.numel() for p in dense.parameters())
        ids = torch.randint(0, 60, (1, seq))
        # the math backend spells attention out as batched matmuls the counter sees
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
            dense(input_ids=ids)
        counted = counter.get_total_flops() // 2
        rotary = seq * elastic.space.head_dim // 2 if kind in ("llama", "phi3") else 0  # position x frequency outer product
        assert counted - cost.macs(config, seq) == rotary
    embeddings = model.get_input_embeddings().weight.numel()
    assert cost.non_embedding_params(elastic.space.largest()) == cost.params(elastic.space.largest()) - cost.embedding_params
    assert cost.embedding_params >= embeddings


def test_supernet_and_extract_passes_through_lowering(tiny_llama, text_jsonl, tmp_path):
    subnet = {"layers": [{"keep": True, "heads": 2, "ffn": 32}, {"keep": False, "heads": 4, "ffn": 64}]}
    recipe = {
        "name": "sub", "threads": 2,
        "steps": [
            {"id": "model", "pass": "load", "config": {"path": str(tiny_llama), "task": "causal-lm", "name": "llama"}},
            {"id": "data", "pass": "dataset", "config": {"path": str(text_jsonl), "task": "causal-lm"}},
            {"id": "super", "pass": "supernet", "config": {"ffn_step": 32}},
            {"id": "sub", "pass": "extract", "config": {"subnet": subnet}},
            {"id": "uniform", "pass": "extract", "inputs": {"supernet": "super"}, "config": {"subnet": "smallest"}},
            {"id": "ov", "pass": "lower", "inputs": {"model": "sub"}, "config": {"target": "openvino-cpu"}},
            {"id": "ov-q", "pass": "quantize", "inputs": {"model": "ov"}, "config": {"policy": {"layers": {"0.ffn_down": "fp32"}}, "calibration_samples": 4, "max_length": 16}},
            {"id": "ort", "pass": "lower", "inputs": {"model": "sub"}, "config": {"target": "onnxruntime-cpu"}},
            {"id": "ort-eval", "pass": "evaluate", "config": {"max_length": 16}},
        ],
    }
    result = run_pipeline(recipe, out=tmp_path, quiet=True)
    sub = result.outputs["sub"]
    arch = json.loads((sub.path / "architecture.json").read_text())
    assert arch["params"] < json.loads((result.outputs["super"].path / "cost_model.json").read_text())["fixed_params"] + 10**6
    assert arch["max_abs_diff_vs_supernet"] <= 1e-5
    assert result.outputs["ov-q"].policy["0.ffn_down"] == "fp32" and "1.qkv" not in result.outputs["ov-q"].policy  # one layer kept
    assert result.outputs["ort-eval"].metrics["perplexity"] > 1
    # a uniform sub-network also loads with Hugging Face's own class and computes the same function
    from transformers import AutoModelForCausalLM

    from tailorfit.pipeline.models.loading import load_torch_model

    uniform = result.outputs["uniform"]
    ours, theirs = load_torch_model(uniform), AutoModelForCausalLM.from_pretrained(uniform.path).eval()
    ids = torch.randint(0, 40, (2, 12))
    np.testing.assert_allclose(_logits(ours, {"input_ids": ids}).numpy(), _logits(theirs, {"input_ids": ids}).numpy(), atol=1e-5)


def test_extract_rejects_configs_outside_the_space(tiny_bert, sentences_csv, tmp_path):
    recipe = {
        "name": "bad", "steps": [
            {"id": "model", "pass": "load", "config": {"path": str(tiny_bert)}},
            {"id": "data", "pass": "dataset", "config": {"path": str(sentences_csv)}},
            {"id": "super", "pass": "supernet", "config": {"ffn_step": 16}},
            {"id": "sub", "pass": "extract", "config": {"subnet": {"layers": [{"heads": 4, "ffn": 40}, {"heads": 4, "ffn": 64}]}}},
        ],
    }
    with pytest.raises(TailorfitError, match="FFN width 40 is not in the search space"):
        run_pipeline(recipe, out=tmp_path, quiet=True)


def test_sandwich_finetuning_improves_the_smallest_subnetwork(tiny_bert, sentences_csv, tmp_path):
    from tailorfit.passes.supernet import load_supernet
    from tailorfit.pipeline.models.data import read_split
    from tailorfit.pipeline.models.loading import load_preprocessor
    from tailorfit.pipeline.models.training import TaskData

    recipe = {
        "name": "sandwich", "threads": 2,
        "steps": [
            {"id": "model", "pass": "load", "config": {"path": str(tiny_bert)}},
            {"id": "data", "pass": "dataset", "config": {"path": str(sentences_csv)}},
            {"id": "ft", "pass": "finetune", "config": {"max_steps": 40, "batch_size": 16, "max_length": 24, "learning_rate": 1e-3}},
            {"id": "super", "pass": "supernet", "config": {"ffn_step": 16}},
            {"id": "sandwich", "pass": "supernet-finetune", "config": {"max_steps": 30, "batch_size": 16, "max_length": 24, "learning_rate": 1e-3, "random_subnets": 1}},
        ],
    }
    result = run_pipeline(recipe, out=tmp_path, quiet=True)
    data = result.outputs["data"]

    def smallest_loss(handle) -> float:
        elastic = load_supernet(handle)
        elastic.activate(handle.space.smallest())
        task = TaskData.load(load_preprocessor(handle.source), data, ["input_ids", "attention_mask"], 24)
        with torch.no_grad():
            return elastic.model(**task.batch(read_split(data, "validation"))).loss.item()

    before, after = smallest_loss(result.outputs["super"]), smallest_loss(result.outputs["sandwich"])
    assert after < before
    log = json.loads((result.outputs["sandwich"].path.parent / "train_log.json").read_text())
    assert log["validation"] and {"largest", "smallest"} <= set(log["validation"][-1])
    assert (result.outputs["sandwich"].path / "search_space.json").is_file()


def test_a_removed_ffn_block_extracts_and_lowers(bert_classifier, sentences_csv, tmp_path):
    """FFN width 0 (a layer without its FFN, as studies of BERT's redundant layers suggest) survives export."""
    subnet = {"layers": [{"heads": 4, "ffn": 0}, {"heads": 2, "ffn": 64}]}
    recipe = {
        "name": "noffn", "threads": 2,
        "steps": [
            {"id": "model", "pass": "load", "config": {"path": str(bert_classifier)}},
            {"id": "data", "pass": "dataset", "config": {"path": str(sentences_csv)}},
            {"id": "super", "pass": "supernet", "config": {"ffn_choices": [0, 64], "head_choices": [2, 4]}},
            {"id": "sub", "pass": "extract", "config": {"subnet": subnet}},
            {"id": "ov", "pass": "lower", "inputs": {"model": "sub"}, "config": {"target": "openvino-cpu"}},
            {"id": "ort", "pass": "lower", "inputs": {"model": "sub"}, "config": {"target": "onnxruntime-cpu"}},
        ],
    }
    result = run_pipeline(recipe, out=tmp_path, quiet=True)
    assert result.outputs["ov"].metrics["lowering_max_abs_diff"] <= 1e-4  # lower's own check against torch
    assert result.outputs["ort"].metrics["lowering_max_abs_diff"] <= 1e-4


def test_sandwich_finetuning_of_a_decoder_lowers_its_smallest_subnetworks_loss(tiny_llama, text_jsonl, tmp_path):
    from tailorfit.passes.supernet import load_supernet
    from tailorfit.pipeline.models.loading import load_preprocessor
    from tailorfit.pipeline.models.training import TaskData

    recipe = {
        "name": "lm-sandwich", "threads": 2,
        "steps": [
            {"id": "model", "pass": "load", "config": {"path": str(tiny_llama), "task": "causal-lm"}},
            {"id": "data", "pass": "dataset", "config": {"path": str(text_jsonl), "task": "causal-lm"}},
            {"id": "super", "pass": "supernet", "config": {"ffn_step": 16}},
            {"id": "sandwich", "pass": "supernet-finetune", "config": {"max_steps": 25, "batch_size": 8, "max_length": 16, "learning_rate": 3e-3}},
        ],
    }
    result = run_pipeline(recipe, out=tmp_path, quiet=True)

    def smallest_loss(handle) -> float:
        elastic = load_supernet(handle)
        elastic.activate(handle.space.smallest())
        task = TaskData.load(load_preprocessor(handle.source), result.outputs["data"], ["input_ids", "attention_mask"], 16)
        with torch.no_grad():
            return elastic.model(**task.batch(task.validation)).loss.item()

    assert smallest_loss(result.outputs["sandwich"]) < smallest_loss(result.outputs["super"])


def test_a_checkpoint_from_another_model_is_refused(tiny_bert, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from tailorfit.pipeline.contract import PassContext
    from tailorfit.pipeline.models.training import CHECKPOINT, TaskData, TrainingConfig, train

    other = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    torch.save({"model": other.state_dict(), "optimizer": {}, "scheduler": {}, "state": {}}, tmp_path / CHECKPOINT)
    model = _model("bert")
    ctx = PassContext("t", tmp_path, seed=0, threads=1)
    data = TaskData(None, ["input_ids"], "text-classification", 8, [{"text": "a", "label": 0}], [])
    with pytest.raises(TailorfitError, match="was written for another model"):
        train(ctx, model, data, TrainingConfig(), lambda batch, i: 0.0, lambda state: None, "test")


def test_killed_sandwich_training_resumes_bit_exact(tiny_bert, sentences_csv, tmp_path):
    """Killed mid-epoch and resumed, super-network training ends in the same weight bytes as a run never killed."""
    import hashlib
    import subprocess

    recipe = {
        "name": "sandwich-resume", "threads": 1,
        "steps": [
            {"id": "model", "pass": "load", "config": {"path": str(tiny_bert)}},
            {"id": "data", "pass": "dataset", "config": {"path": str(sentences_csv)}},
            {"id": "ft", "pass": "finetune", "config": {"max_steps": 5, "batch_size": 16, "max_length": 24}},
            {"id": "super", "pass": "supernet", "config": {"ffn_step": 16}},
            {"id": "sandwich", "pass": "supernet-finetune", "config": {"epochs": 10, "max_steps": 300, "batch_size": 8, "max_length": 24, "learning_rate": 1e-3,
                                                                         "random_subnets": 1, "checkpoint_every": 5}},
        ],
    }
    cmd = cli_run_command(recipe, tmp_path)
    cache = tmp_path / "out" / ".cache" / "supernet-finetune"
    kill_when(cmd, lambda: bool(list(cache.glob("*.partial/checkpoint.pt"))), after=0.5)
    assert list(cache.glob("*.partial/checkpoint.pt")) and not [p for p in cache.iterdir() if not p.name.endswith(".partial")], "killed too late"
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = next(p for p in cache.iterdir() if not p.name.endswith(".partial"))
    clean = run_pipeline(recipe, out=tmp_path / "clean", quiet=True).outputs["sandwich"]
    digest = lambda f: hashlib.sha256(f.read_bytes()).hexdigest()
    assert digest(resumed / clean.path.name / "model.safetensors") == digest(clean.path / "model.safetensors")


def test_a_sliced_trained_decoder_stays_far_below_a_uniform_guess(tiny_llama):
    """A tiny LLaMA trained here on the test corpus, then cut by measured importance to half its layers and heads and a
    quarter of its FFN: its perplexity must stay well below the vocabulary size (what a uniform guess scores), unlike the
    millions SmolLM2 reached when units were chosen by weight magnitude and layers by position."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    rng = random.Random(0)  # a corpus a 4-layer model can learn: few choices per position
    texts = [" ".join(rng.choice(pair) for pair in (["the", "a"], ["film", "movie"], ["was"], ["very", "quite"], ["good", "bad"], ["and"], ["funny", "dull"]))
             for _ in range(300)]
    ids = tok(texts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    train, held_out = {k: v[:240] for k, v in ids.items()}, {k: v[240:] for k, v in ids.items()}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                         intermediate_size=128, max_position_embeddings=64, pad_token_id=0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        rows = torch.randint(0, 240, (16,), generator=torch.Generator().manual_seed(step))
        batch = {k: v[rows] for k, v in train.items()}
        model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()

    def perplexity(net) -> float:
        with torch.no_grad():
            return math.exp(net(**held_out, labels=held_out["input_ids"].masked_fill(held_out["attention_mask"] == 0, -100)).loss.item())

    full = perplexity(model)
    elastic = ElasticModel(model, family_for("llama"), default_space(model.config, ffn_step=32, min_layers=2))
    scores = elastic.importance([{k: v[:64] for k, v in train.items()}])
    elastic.reorder(scores)
    elastic.space = elastic.space.model_copy(update={"drop_order": elastic.drop_order([{k: v[:64] for k, v in train.items()}])["drop_order"]})
    sliced = SubnetConfig(layers=[LayerChoice(keep=k, heads=2, ffn=32) for k in elastic.space.kept_at_depth(2)])
    elastic.activate(sliced)
    pruned = perplexity(elastic.model)
    assert full < len(tok) / 8  # it learned the corpus
    assert pruned < len(tok) / 4, (full, pruned)


def test_hidden_states_are_matched_at_the_layers_a_subnetwork_kept():
    from tailorfit.pipeline.models.distillation import hidden_state_loss

    teacher = tuple(torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(5))  # embeddings + 4 layers
    kept = [0, 2, 3]
    student = (teacher[0], teacher[1], teacher[3], teacher[4])  # what a perfect 3-layer student keeping layers 0, 2, 3 yields
    assert float(hidden_state_loss(student, teacher, kept)) == 0
    shifted = (teacher[0], teacher[1], teacher[2], teacher[4])  # layer 1's output where layer 2's belongs
    assert float(hidden_state_loss(shifted, teacher, kept)) > 0.1
    # the last state the head reads is matched to the teacher's last even when the last layer was dropped
    assert float(hidden_state_loss((teacher[0], teacher[1], teacher[4]), teacher, [0, 1])) == 0
