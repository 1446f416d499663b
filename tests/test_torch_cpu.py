"""torch-cpu on tiny BERT, LLaMA and GPT-2 models: the exported program matches torch, Neural Compressor INT8 follows the
policy layer by layer (read from the saved graph itself), what it cannot do fails with one clear line, and a recipe packages it."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import classification_recipe
from tailorfit.pipeline import HFModel, TailorfitError, run_pipeline
from tailorfit.pipeline.families import family_by_name
from tailorfit.pipeline.models import ExportWrapper, example_inputs, input_names, load_torch_model
from tailorfit.targets import get_target
from tailorfit.targets.base import read_linear_map

TARGET = get_target("torch-cpu")
# sessions here use one thread: on a shared 2-core machine, two OpenMP threads wait milliseconds per op for a busy core


def _wrapper(folder, kind):
    handle = HFModel(path=folder, task="text-classification" if kind == "bert" else "causal-lm", family=kind, name="t")
    net = load_torch_model(handle)
    names = input_names(net, handle)
    return handle, ExportWrapper(net, names).eval(), names


@pytest.fixture(scope="module")
def lowered(bert_classifier, tiny_llama, tmp_path_factory):
    """Both tiny models lowered once: kind -> (handle, wrapper, names, files)."""
    out = {}
    for kind, folder in (("bert", bert_classifier), ("llama", tiny_llama)):
        handle, wrapper, names = _wrapper(folder, kind)
        files = TARGET.lower(wrapper, example_inputs(handle, wrapper.model, names), names, tmp_path_factory.mktemp(f"{kind}-fp32"))
        out[kind] = handle, wrapper, names, files
    return out


def _quantize(lowered, kind, keep, out):
    handle, wrapper, names, files = lowered[kind]
    # few samples of varied lengths, batch 1 (a padded row) as the quantize pass feeds them
    calibration = [{n: t[1:].numpy() for n, t in zip(names, example_inputs(handle, wrapper.model, names, seq=s))} for s in (5, 9, 16, 23)]
    return TARGET.quantize(files, keep, calibration, 4, out)


def _qdq_neighbours(files):
    """For each mapped linear, whether a dequantize op feeds it or a quantize op reads its output, from the saved graph."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  registers the ops the program calls

    program = torch.export.load(files[0])
    mapping = read_linear_map(files)
    qdq = {}
    for node in program.graph.nodes:
        if node.name in mapping and node.target == torch.ops.aten.linear.default:
            around = [a for a in node.args if isinstance(a, torch.fx.Node)] + list(node.users)
            qdq[node.name] = any("quantize" in str(a.target) for a in around)
    return qdq


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_program_matches_torch_at_untraced_shapes(kind, lowered):
    handle, wrapper, names, files = lowered[kind]
    assert [f.name for f in files] == ["model.pt2"]
    run = TARGET.session(files, 1, "f32")
    for rows, seq in ((slice(1, 2), 23), (slice(None), 7)):  # traced at batch 2, length 16; here batch 1 (a padded row) and 3
        other = tuple(t[rows] for t in example_inputs(handle, wrapper.model, names, batch=3, seq=seq))
        with torch.inference_mode():
            expected = wrapper(*other).numpy()
        got = run({n: t.numpy() for n, t in zip(names, other)})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5)
    family = family_by_name(kind)
    places = {family.classify(m) for m in read_linear_map(files).values()} - {None}
    for layer in range(2):
        assert {(layer, g, True) for g in ("qkv", "attn_out", "ffn_up", "ffn_down")} <= places
        assert (layer, "qkv", False) in places  # the attention product is mapped too


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_all_int8_quantizes_every_linear(kind, lowered, tmp_path):
    handle, wrapper, names, files = lowered[kind]
    q = _quantize(lowered, kind, [], tmp_path)
    precisions = TARGET.runtime_precisions(q, 2, "f32")
    mapping = read_linear_map(files)
    linears = [n for n, m in mapping.items() if isinstance(wrapper.model.get_submodule(m), nn.Linear)]
    assert linears and {precisions[n] for n in linears} == {"int8"}
    assert all(_qdq_neighbours(q)[n] for n in linears)
    assert {p for n, p in precisions.items() if n not in linears} == {"fp32"}  # attention products stay float on this quantizer
    other = example_inputs(handle, wrapper.model, names, batch=3, seq=11)
    with torch.inference_mode():
        expected = wrapper(*other).numpy()
    got = TARGET.session(q, 1, "f32")({n: t.numpy() for n, t in zip(names, other)})
    # int8 rounding, not garbage: random tiny models have odd logit scales, so check agreement by correlation, not by an absolute bound
    assert got.shape == expected.shape and not np.array_equal(got, expected)
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.98


def test_layer_kept_fp32_has_no_quantize_ops_around_its_linears(lowered, tmp_path):
    _, _, _, files = lowered["bert"]
    family = family_by_name("bert")
    places = {n: family.classify(m) for n, m in read_linear_map(files).items()}
    keep = sorted(n for n, where in places.items() if where and where[0] == 1)  # its linears and its attention product
    q = _quantize(lowered, "bert", keep, tmp_path)
    qdq = _qdq_neighbours(q)
    precisions = TARGET.runtime_precisions(q, 2, "f32")
    assert set(qdq) == {n for n, where in places.items() if where is None or where[2]}  # every linear, found by name
    for node, has_qdq in qdq.items():
        in_layer_1 = places[node] is not None and places[node][0] == 1
        assert has_qdq != in_layer_1, (node, places[node])
        assert precisions[node] == ("fp32" if in_layer_1 else "int8")
    assert sum(1 for where in places.values() if where and where[0] == 1 and where[2]) == 6


def test_groups_sharing_an_attention_module_are_excluded_separately(lowered, tmp_path):
    """LLaMA's o_proj (attn_out) sits inside the attention module with q/k/v: keeping only qkv fp32 must not take it along."""
    _, _, _, files = lowered["llama"]
    family = family_by_name("llama")
    places = {n: family.classify(m) for n, m in read_linear_map(files).items()}
    keep = sorted(n for n, where in places.items() if where and where[:2] == (0, "qkv"))
    q = _quantize(lowered, "llama", keep, tmp_path)
    precisions = TARGET.runtime_precisions(q, 2, "f32")
    for node, where in places.items():
        if where is None or where[2]:
            assert precisions[node] == ("fp32" if where and where[:2] == (0, "qkv") else "int8"), (node, where)
    assert sum(p == "fp32" for n, p in precisions.items() if places[n] and places[n][2]) == 3


def test_gpt2_conv1d_layers_are_mapped_and_refused_for_int8(tiny_gpt2, tmp_path):
    """GPT-2's Conv1D layers lower to addmm, which the X86 PT2E quantizer does not quantize: say so instead of passing quietly."""
    handle, wrapper, names = _wrapper(tiny_gpt2, "gpt2")
    for sub in ("fp32", "int8", "head"):
        (tmp_path / sub).mkdir()
    files = TARGET.lower(wrapper, example_inputs(handle, wrapper.model, names), names, tmp_path / "fp32")
    other = example_inputs(handle, wrapper.model, names, batch=3, seq=9)
    with torch.inference_mode():
        np.testing.assert_allclose(TARGET.session(files, 1, "f32")({n: t.numpy() for n, t in zip(names, other)}), wrapper(*other).numpy(), atol=1e-5)
    family = family_by_name("gpt2")
    places = {n: family.classify(m) for n, m in read_linear_map(files).items()}
    conv1d = sorted(n for n, where in places.items() if where and where[2])
    assert len(conv1d) == 8
    calibration = [{n: t[1:].numpy() for n, t in zip(names, example_inputs(handle, wrapper.model, names))}]
    with pytest.raises(TailorfitError, match="Conv1D"):
        TARGET.quantize(files, [], calibration, 1, tmp_path / "int8")
    precisions = TARGET.runtime_precisions(TARGET.quantize(files, conv1d, calibration, 1, tmp_path / "head"), 2, "f32")
    assert [precisions[n] for n, where in places.items() if where is None] == ["int8"]  # the LM head
    assert {precisions[n] for n in conv1d} == {"fp32"}


class _DataDependent(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, hidden):
        if hidden[:, 0].mean() > 0:  # a branch on tensor values: torch.export cannot capture it
            return self.inner(hidden)
        return -self.inner(hidden)


def test_unexportable_model_names_the_module(bert_classifier, tmp_path):
    handle, wrapper, names = _wrapper(bert_classifier, "bert")
    wrapper.model.bert.pooler = _DataDependent(wrapper.model.bert.pooler)
    with pytest.raises(TailorfitError) as err:
        TARGET.lower(wrapper, example_inputs(handle, wrapper.model, names), names, tmp_path)
    message = str(err.value)
    assert "bert.pooler" in message and "onnxruntime-cpu" in message and len(message.splitlines()) == 1


def test_recipe_packages_a_loadable_torch_candidate(tiny_bert, sentences_csv, tmp_path):
    recipe = classification_recipe(tiny_bert, sentences_csv, name="torch", targets=("torch-cpu",), policy={"layers": {"1": "fp32"}})
    result = run_pipeline(recipe, out=tmp_path, quiet=True)
    handle = result.outputs["torch-int8"]
    report = json.loads(handle.reports["precision"].read_text())
    assert report["fp32_linears"] == 6 and report["int8_linears"] == 8 and report["unattributed_linears"] == 0
    fp32, mixed = "tiny-fp32", handle.candidate
    for cand in (fp32, mixed):
        folder = result.run_dir / "candidates" / cand
        metrics = json.loads((folder / "metrics.json").read_text())["targets"]["torch-cpu"]
        assert metrics["files"] == ["torch/model.pt2"] and 0 <= metrics["accuracy"] <= 1 and metrics["latency"]["16"]["threads"] == 2
        assert "torch.export.load" in (folder / "README.md").read_text()
    folder = result.run_dir / "candidates" / mixed
    assert "accuracy_change" in json.loads((folder / "metrics.json").read_text())["targets"]["torch-cpu"]["versus"]["fp32"]
    # the model card's own instructions, run in the candidate folder (the INT8 program needs its quantize ops registered)
    snippet = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    done = subprocess.run([sys.executable, "-c", snippet + "\nprint(tuple(logits.shape))"], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(1, 2)")
