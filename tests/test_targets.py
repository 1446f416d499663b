"""Both targets on tiny BERT and LLaMA models: lowering matches torch, and precision policies really take effect."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tailorfit.pipeline.models.handles import HFModel
from tailorfit.pipeline.families import family_by_name
from tailorfit.pipeline.models.loading import ExportWrapper, example_inputs, input_names, load_torch_model
from tailorfit.targets import TARGETS, get_target
from tailorfit.targets.base import read_linear_map

TARGET_NAMES = list(TARGETS)


def _lower(folder, task, family, target, out):
    handle = HFModel(path=folder, task=task, family=family, name="t")
    net = load_torch_model(handle)
    names = input_names(net, handle)
    wrapper = ExportWrapper(net, names).eval()
    example = example_inputs(handle, net, names)
    out.mkdir()
    files = target.lower(wrapper, example, names, out)
    return wrapper, names, example, files


@pytest.mark.parametrize("target_name", TARGET_NAMES)
@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_lowered_outputs_match_torch_at_other_shapes(target_name, kind, bert_classifier, tiny_llama, tiny_gpt2, tmp_path):
    folder, task = {"bert": (bert_classifier, "text-classification"), "llama": (tiny_llama, "causal-lm"), "gpt2": (tiny_gpt2, "causal-lm")}[kind]
    target = get_target(target_name)
    wrapper, names, _, files = _lower(folder, task, kind, target, tmp_path / "out")
    for f in files:
        assert f.is_file() and f.stat().st_size > 0
    handle = HFModel(path=folder, task=task, family=kind, name="t")
    # a batch and length different from the traced ones: the dynamic dimensions really are dynamic
    other = example_inputs(handle, wrapper.model, names, batch=3, seq=11)
    with torch.inference_mode():
        expected = wrapper(*other).numpy()
    got = target.session(files, 2, "f32")({n: t.numpy() for n, t in zip(names, other)})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)
    modules = set(read_linear_map(files).values())
    family = family_by_name(kind)
    classified = {family.classify(m) for m in modules} - {None}
    assert {(i, g, True) for i in range(2) for g in ("qkv", "attn_out", "ffn_up", "ffn_down")} <= classified


@pytest.mark.parametrize("target_name", TARGET_NAMES)
def test_policy_takes_effect_in_the_runtime(target_name, bert_classifier, tmp_path):
    """All-INT8 runs every linear in int8; keeping layer 1 FP32 leaves exactly its linears in float (read from the runtime)."""
    target = get_target(target_name)
    _, names, example, files = _lower(bert_classifier, "text-classification", "bert", target, tmp_path / "fp32")
    mapping = read_linear_map(files)
    family = family_by_name("bert")
    linears = {n: family.classify(m) for n, m in mapping.items()}
    calibration = [{n: t[:1].numpy() for n, t in zip(names, example)} for _ in range(4)]

    def quantized(keep, out):
        out.mkdir()
        q = target.quantize(files, keep, calibration, 4, out)
        return target.runtime_precisions(q, 2, "f32")

    all_int8 = quantized([], tmp_path / "int8")
    layer_linears = [n for n, where in linears.items() if where and where[2]]
    seen = [n for n in layer_linears if n in all_int8]
    assert len(seen) >= len(layer_linears) - 1  # OpenVINO may fuse one node's name away (reported as unattributed)
    assert all(all_int8[n] == "int8" for n in seen)

    keep = [n for n, where in linears.items() if where and where[0] == 1]
    mixed = quantized(keep, tmp_path / "mixed")
    for n, where in linears.items():
        if not where or not where[2] or n not in mixed:
            continue
        assert mixed[n] == ("fp32" if where[0] == 1 else "int8"), (n, where, mixed[n])
    assert all(n in mixed for n in keep if linears[n][2])
