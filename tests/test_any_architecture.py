"""An architecture no family module describes, whose structure cannot be read as one (ALBERT: one block shared by
every layer, so there is no list of layers to prune) or whose reading does not hold on its weights (MPNet: one
relative position bias for all heads), runs whole: load, fine-tune, lower, quantize with a whole-model policy,
evaluate, benchmark, package — what optimum-intel and NNCF do for any exportable model. What needs a family
(super-networks, per-layer policies) refuses it in one line, with what was seen."""
from __future__ import annotations

import json

import pytest
import transformers as tf

from conftest import classification_recipe
from tailorfit.pipeline import TailorfitError, run_pipeline
from tailorfit.pipeline.families import find_family

ALBERT = lambda vocab: tf.AlbertModel(tf.AlbertConfig(vocab_size=vocab, embedding_size=16, hidden_size=32, num_hidden_layers=2,  # noqa: E731
                                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64))


# MPNet takes no segment ids and counts positions from its padding id: the tokenizer's [PAD] is 0
MPNET = lambda vocab: tf.MPNetModel(tf.MPNetConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,  # noqa: E731
                                                   intermediate_size=64, max_position_embeddings=66, pad_token_id=0))
WHOLE = {"albert": (ALBERT, "No tailorfit family module describes the albert architecture", ["input_ids", "token_type_ids", "attention_mask"]),
         "mpnet": (MPNET, "The structure tailorfit found for this architecture did not hold on its weights", ["input_ids", "attention_mask"])}


@pytest.fixture(scope="module")
def tiny_albert(save_tiny):
    assert find_family("albert") is None  # the point of this file: if a module covers ALBERT one day, pick another architecture
    return save_tiny("tiny-albert", "bert", ALBERT)


@pytest.mark.parametrize("name", list(WHOLE))
def test_an_architecture_without_a_family_is_lowered_quantized_measured_and_packaged(name, save_tiny, sentences_csv, tmp_path):
    build, note, inputs = WHOLE[name]
    assert find_family(name) is None  # the point of this test: if a module covers it one day, pick another architecture
    recipe = classification_recipe(save_tiny(f"whole-{name}", "bert", build), sentences_csv, name=name)
    recipe["steps"][-1:-1] = [{"id": "torch-fp32", "pass": "lower", "inputs": {"model": "finetune"}, "config": {"target": "torch-cpu"}},
                              {"id": "torch-w8", "pass": "quantize", "config": {"policy": "int8", "scheme": "weight-only"}}]
    result = run_pipeline(recipe, out=tmp_path, quiet=True)
    assert result.manifest["status"] == "finished"
    model = result.outputs["finetune"]
    assert model.family is None and model.notes and note in model.notes[-1], model.notes
    assert result.outputs["openvino-fp32"].inputs == inputs  # what its tokenizer gives (in its order) that its forward takes
    for target in ("openvino", "onnxruntime"):
        quantized = result.outputs[f"{target}-int8"]
        # ALBERT: the shared block's six linears, the embedding projection, pooler, classifier; MPNet: 12 + its head
        assert quantized.metrics["int8_linears"] >= 9 and quantized.metrics["fp32_linears"] == 0, quantized.metrics
        assert result.outputs[f"{target}-fp32"].metrics["lowering_max_abs_diff"] < 1e-3
        for precision in ("fp32", "int8"):
            assert 0 <= result.outputs[f"{target}-{precision}-eval"].metrics["accuracy"] <= 1
            assert result.outputs[f"{target}-{precision}-bench"].metrics
    assert result.outputs["torch-w8"].metrics["int8_linears"] >= 9 and result.outputs["torch-w8"].metrics["fp32_linears"] == 0
    cards = list((result.run_dir / "candidates").glob("*/README.md"))
    assert cards and all(note in c.read_text() for c in cards)
    entries = json.loads((result.run_dir / "metrics.json").read_text())
    assert entries and all(e["family"] is None for e in entries.values()), entries


@pytest.mark.parametrize("step, match", [
    ({"id": "super", "pass": "supernet", "inputs": {"model": "model"}, "config": {}}, "a super-network needs to know where .* no list of identical blocks"),
    ({"id": "mixed", "pass": "quantize", "inputs": {"model": "ov"}, "config": {"policy": {"default": "int8", "layers": {"0": "fp32"}}}},
     "a per-layer precision policy needs to know the model's layers"),
])
def test_layer_wise_steps_refuse_it_before_anything_runs(tiny_albert, sentences_csv, tmp_path, step, match):
    steps = [{"id": "model", "pass": "load", "config": {"path": str(tiny_albert), "task": "text-classification"}},
             {"id": "data", "pass": "dataset", "config": {"path": str(sentences_csv)}},
             {"id": "ov", "pass": "lower", "inputs": {"model": "model"}, "config": {"target": "openvino-cpu"}}, step]
    with pytest.raises(TailorfitError, match=match):
        run_pipeline({"name": "refused", "steps": steps}, out=tmp_path, quiet=True)
    assert not list(tmp_path.rglob("*.partial"))  # refused at planning: nothing ran, nothing half-written


def test_a_task_the_architecture_has_no_head_for_is_refused_at_load(tiny_albert, tmp_path):
    recipe = {"name": "no-head", "steps": [{"id": "model", "pass": "load", "config": {"path": str(tiny_albert), "task": "causal-lm"}}]}
    with pytest.raises(TailorfitError, match="transformers has no causal-lm model for the albert architecture"):
        run_pipeline(recipe, out=tmp_path, quiet=True)
