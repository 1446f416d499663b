"""QuantizationPolicy resolution and the content-addressed cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tailorfit.pipeline import TailorfitError
from tailorfit.pipeline.models.handles import HFModel, Lowered
from tailorfit.pipeline.models.policy import QuantizationPolicy
from tailorfit.pipeline.cache import Cache, step_key
from tailorfit.pipeline.contract import get_pass
from tailorfit.pipeline.families import family_for


def test_policy_resolution_specific_keys_win():
    p = QuantizationPolicy(default="int8", head="fp32", layers={"1": "fp32", "*.ffn_down": "fp32", "1.qkv": "int8"})
    r = p.resolve(3)
    assert r["0.qkv"] == "int8" and r["0.ffn_down"] == "fp32"
    assert r["1.qkv"] == "int8" and r["1.attn_out"] == "fp32"
    assert r["2.ffn_up"] == "int8" and r["head"] == "fp32"
    assert len(r) == 3 * 4 + 1


def test_policy_rejects_bad_keys_and_layers():
    with pytest.raises(ValidationError):
        QuantizationPolicy(layers={"0.mlp": "fp32"})
    with pytest.raises(ValidationError):
        QuantizationPolicy(layers={"0": "int2"})
    with pytest.raises(TailorfitError, match="names layer 5"):
        QuantizationPolicy(layers={"5.qkv": "fp32"}).resolve(4)


@pytest.mark.parametrize(
    "model_type, module, expected",
    [
        ("bert", "bert.encoder.layer.3.attention.self.key", (3, "qkv", True)),
        ("bert", "bert.encoder.layer.3.attention.self", (3, "qkv", False)),
        ("bert", "bert.encoder.layer.0.output.dense", (0, "ffn_down", True)),
        ("bert", "classifier", None),
        ("llama", "model.layers.1.mlp.gate_proj", (1, "ffn_up", True)),
        ("qwen2", "model.layers.11.self_attn.o_proj", (11, "attn_out", True)),
        ("gpt2", "transformer.h.2.mlp.c_proj", (2, "ffn_down", True)),
        ("vit", "vit.encoder.layer.5.attention.attention.value", (5, "qkv", True)),
    ],
)
def test_families_classify_modules(model_type, module, expected):
    assert family_for(model_type).classify(module) == expected


def _handle(tmp_path: Path, key: str = "k0") -> HFModel:
    return HFModel(path=tmp_path, task="text-classification", family="bert", name="m", key=key)


def _lowered(tmp_path: Path, key: str = "k0", target: str = "openvino-cpu") -> Lowered:
    return Lowered(target=target, files=[], candidate="c", precision="fp32", inference_precision="f32", inputs=["input_ids"],
                   source=_handle(tmp_path), key=key)


def test_key_depends_on_config_and_inputs(tmp_path):
    bench = get_pass("benchmark")
    cfg = bench.Config()
    a = step_key(bench(cfg), {"model": _lowered(tmp_path)}, "")
    assert a == step_key(bench(cfg), {"model": _lowered(tmp_path)}, "")
    assert a != step_key(bench(bench.Config(runs=60)), {"model": _lowered(tmp_path)}, "")
    assert a != step_key(bench(cfg), {"model": _lowered(tmp_path, "k1")}, "")
    assert a != step_key(bench(cfg), {"model": _lowered(tmp_path)}, "other input bytes")


def test_a_target_step_is_keyed_on_that_targets_packages_only(tmp_path):
    """Upgrading ONNX Runtime must not invalidate OpenVINO branches: a step serving a target hashes that target's packages."""
    bench, quantize = get_pass("benchmark"), get_pass("quantize")
    ov = bench(bench.Config()).packages_for({"model": _lowered(tmp_path)})
    ort = quantize(quantize.Config(policy="int8")).packages_for({"model": _lowered(tmp_path, target="onnxruntime-cpu")})
    assert "openvino" in ov and "onnxruntime" not in ov
    assert "onnxruntime" in ort and "openvino" not in ort and "nncf" not in ort
    lower = get_pass("lower")
    assert "onnxruntime" not in lower(lower.Config(target="openvino-cpu")).packages_for({"model": _handle(tmp_path)})


def test_commit_is_atomic_and_relocates_paths(tmp_path):
    cache = Cache(tmp_path / "cache")
    work = cache.work_dir("load", "abc")
    (work / "model").mkdir()
    assert cache.lookup("load", "abc") is None  # a partial folder is not an entry
    handle = cache.commit("load", "abc", _handle(work / "model"), work)
    assert handle.path == cache.entry("load", "abc") / "model" and handle.key == "abc"
    assert not work.exists()
    assert cache.lookup("load", "abc") == handle
    (handle.path).rmdir()
    assert cache.lookup("load", "abc") is None  # vanished files make the entry a miss


def test_two_runs_sharing_a_cache_produce_each_entry_once(tiny_bert, sentences_csv, tmp_path):
    """Two processes start the same steps at once on one cache: one produces each entry while the other waits for it and
    reads it, so no partial folder is ever written by two runs; both runs finish, and every entry records its cost."""
    import json
    import subprocess
    import sys

    import yaml

    from conftest import classification_recipe

    procs = []
    for name in ("first", "second"):
        recipe = classification_recipe(tiny_bert, sentences_csv, name=name, targets=("openvino-cpu",))
        recipe["steps"] = [s for s in recipe["steps"] if s["pass"] in ("load", "dataset", "finetune", "lower", "evaluate")]
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        procs.append(subprocess.Popen([sys.executable, "-m", "tailorfit.pipeline.cli", "run", str(path), "--out", str(tmp_path / "out"), "--quiet"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    manifests = [json.loads((tmp_path / "out" / name / "manifest.json").read_text()) for name in ("first", "second")]
    for step in ("finetune", "openvino-fp32", "openvino-fp32-eval"):
        hits = sorted(m["steps"][step]["cache_hit"] for m in manifests)
        assert hits == [False, True], (step, hits)
        assert all(m["steps"][step]["produced"]["peak_rss_mb"] > 0 for m in manifests)
    assert not list((tmp_path / "out" / ".cache").glob("*/*.partial"))


def test_the_seed_is_in_every_key_that_uses_it(sentences_csv, tmp_path):
    """Two seeds on one cache: the second must not take the first's split (same config, same data file) from the cache."""
    from tailorfit.pipeline import run_pipeline

    def run(seed: int):
        recipe = {"name": f"seed{seed}", "seed": seed, "steps": [{"id": "data", "pass": "dataset", "config": {"path": str(sentences_csv)}}]}
        return run_pipeline(recipe, out=tmp_path / "out", cache_dir=tmp_path / "cache", quiet=True)

    first, second = run(0), run(1)
    a, b = first.outputs["data"], second.outputs["data"]
    assert a.key != b.key and not second.manifest["steps"]["data"]["cache_hit"]
    ids = lambda d: [json.loads(line)["id"] for line in (d.path / "test.jsonl").read_text().splitlines()]
    assert ids(a) != ids(b)
    assert (first.manifest["seed"], second.manifest["seed"]) == (0, 1)
    assert run(0).outputs["data"].key == a.key  # and the first seed still finds its own
