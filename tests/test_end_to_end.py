"""Whole recipes through package, the cache on a second run, and the CLI."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import classification_recipe
from tailorfit.pipeline import read_run, run_pipeline
from tailorfit.pipeline.host import lacks_native


@pytest.fixture(scope="module")
def classification_run(tiny_bert, sentences_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    first = run_pipeline(classification_recipe(tiny_bert, sentences_csv), out=out, quiet=True)
    return out, first


def test_artifact_layout_and_metrics(classification_run):
    out, result = classification_run
    run_dir = result.run_dir
    manifest, metrics = read_run(run_dir)
    assert manifest["status"] == "finished"
    assert set(metrics) == {"tiny-fp32", "tiny-int8"}
    for cand, entry in metrics.items():
        folder = run_dir / "candidates" / cand
        assert (folder / "openvino" / "model.xml").is_file() and (folder / "openvino" / "model.bin").is_file()
        assert (folder / "onnx" / "model.onnx").is_file()
        assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
        card = (folder / "README.md").read_text()
        assert "openvino-cpu" in card and "onnxruntime-cpu" in card and "import openvino" in card
        for target, m in entry["targets"].items():
            assert 0 <= m["accuracy"] <= 1 and m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
            assert m["examples"] == 40
            lat = m["latency"]["16"]
            assert lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] <= lat["max_ms"]
            assert lat["threads"] == 2 and lat["inference_precision"] == "f32" and lat["runs"] == 50
            assert m["size_mb"] > 0
    int8 = metrics["tiny-int8"]["targets"]
    for target in ("openvino-cpu", "onnxruntime-cpu"):
        assert int8[target]["int8_linears"] > 0 and int8[target]["fp32_linears"] == 0
        assert int8[target]["versus"]["fp32"]["latency_ratio"]["16"] > 0  # timed round-robin with the FP32 model at packaging
        change = int8[target]["versus"]["fp32"]["accuracy_change"]
        assert change["n"] == 40 and change["ci_low"] <= change["difference"] <= change["ci_high"]
    # weights shrink; on a model this tiny OpenVINO's larger graph description (.xml) eats the saving in total size
    weights = {c: (run_dir / "candidates" / c / "openvino" / "model.bin").stat().st_size for c in metrics}
    assert weights["tiny-int8"] < 0.5 * weights["tiny-fp32"]
    assert int8["onnxruntime-cpu"]["size_mb"] < 0.5 * metrics["tiny-fp32"]["targets"]["onnxruntime-cpu"]["size_mb"]
    assert manifest["host"]["cpu"] and manifest["packages"]["openvino"] and manifest["inputs"]["model"]
    # the run says what this CPU's INT8 timings are worth (said once, though two quantize steps ask) and so does the INT8 card
    missing = lacks_native("int8", manifest["host"])
    assert manifest["caveats"] == ([missing] if missing else [])
    assert ("**Caveat:**" in (run_dir / "candidates" / "tiny-int8" / "README.md").read_text()) == bool(missing)
    assert "**Caveat:**" not in (run_dir / "candidates" / "tiny-fp32" / "README.md").read_text()


def test_a_moved_cache_answers_every_step(classification_run, tiny_bert, sentences_csv, tmp_path):
    """A finished cache copied to another folder (another CI job, a Ray node): a re-run from the copy takes every step
    from it, and every path it hands out lies inside the copy."""
    import shutil

    out, first = classification_run
    moved = tmp_path / "elsewhere" / "cache"
    shutil.copytree(out / ".cache", moved, symlinks=True)
    for entry in moved.glob("*/*/handle.json"):
        assert str(out) not in entry.read_text()  # nothing points back at the old place
    again = run_pipeline(classification_recipe(tiny_bert, sentences_csv), out=tmp_path / "out", cache_dir=moved, quiet=True)
    assert all(s["cache_hit"] for s in again.manifest["steps"].values())
    int8 = again.outputs["openvino-int8-bench"]
    assert int8.files[0].is_relative_to(moved) and int8.source.path.is_relative_to(moved)
    assert (again.run_dir / "candidates" / "tiny-int8" / "openvino" / "model.xml").is_file()


def test_second_run_hits_the_cache_and_force_reruns_downstream(classification_run, tiny_bert, sentences_csv):
    out, first = classification_run
    second = run_pipeline(classification_recipe(tiny_bert, sentences_csv), out=out, quiet=True)
    hits = {sid: s["cache_hit"] for sid, s in second.manifest["steps"].items()}
    assert all(hits.values())  # package too: its interleaved timing is not redone
    assert second.outputs["openvino-int8"].key == first.outputs["openvino-int8"].key
    # a cached package is published again: the run folder's cards and metrics are this run's, whole
    card = (second.run_dir / "candidates" / "tiny-int8" / "README.md").read_text()
    packaged = json.loads((second.run_dir / "candidates" / "tiny-int8" / "metrics.json").read_text())
    assert "openvino-int8" in card and packaged["targets"]["openvino-cpu"]["step"] == "openvino-int8-bench"
    assert second.outputs["package"].path == second.run_dir
    forced = run_pipeline(classification_recipe(tiny_bert, sentences_csv), out=out, quiet=True, force=["openvino-int8"])
    hits = {sid: s["cache_hit"] for sid, s in forced.manifest["steps"].items()}
    assert not hits["openvino-int8"] and not hits["openvino-int8-eval"] and not hits["openvino-int8-bench"]
    assert hits["openvino-fp32"] and hits["onnxruntime-int8"] and hits["finetune"]


def test_mixed_policy_recipe_keeps_named_layers_fp32(tiny_bert, sentences_csv, tmp_path):
    recipe = classification_recipe(tiny_bert, sentences_csv, name="mixed", targets=("openvino-cpu",), policy={"layers": {"1": "fp32"}})
    result = run_pipeline(recipe, out=tmp_path, quiet=True)
    handle = result.outputs["openvino-int8"]
    assert handle.precision == "mixed" and handle.candidate.startswith("tiny-mixed-")
    report = json.loads(handle.reports["precision"].read_text())
    kept = [r for r in report["nodes"] if r["policy"] == "fp32" and r["linear"]]
    assert len(kept) == 6 and all(r["runtime"] == "fp32" for r in kept)
    assert report["fp32_linears"] == 6 and report["int8_linears"] >= 6


def test_a_run_log_holds_tailorfits_lines_and_no_third_party_noise(tiny_bert, sentences_csv, tmp_path):
    """NNCF set its logger to INFO when imported after the run's logging setup (hundreds of lines naming the nodes a
    mixed policy leaves unquantized) and drew progress bars on rich's global console; both stay out unless --debug."""
    import yaml

    recipe = classification_recipe(tiny_bert, sentences_csv, name="noise", targets=("openvino-cpu",), policy={"layers": {"1": "fp32"}})
    recipe["steps"] = [s for s in recipe["steps"] if s["pass"] != "benchmark" and s["id"] != "package"]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    r = subprocess.run([sys.executable, "-m", "tailorfit.pipeline.cli", "run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    log = r.stdout + r.stderr
    # a log file gets one unpadded line per record, never wrapped at a terminal's width
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO    openvino-int8: running quantize$", r.stderr, re.M), r.stderr[-2000:]
    records = [line for line in r.stderr.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert len(records) > 10 and not [line for line in records if line.endswith(" ")]
    for noise in ("INFO:nncf", "Statistics collection", "Smooth Quant", "FutureWarning", "DeprecationWarning", "register_constant"):
        assert noise not in log, noise
    debug = subprocess.run([sys.executable, "-m", "tailorfit.pipeline.cli", "run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"),
                            "--force", "openvino-int8", "--debug"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert debug.returncode == 0 and "nncf" in debug.stdout + debug.stderr  # the same run with --debug shows what NNCF says
    assert not (tmp_path / "nncf_debug").exists()  # and writes nothing into the user's working folder


def test_causal_lm_recipe_reports_perplexity(tiny_llama, text_jsonl, tmp_path, capsys):
    recipe = {
        "name": "lm", "threads": 2,
        "steps": [
            {"id": "model", "pass": "load", "config": {"path": str(tiny_llama), "task": "causal-lm", "name": "llama"}},
            {"id": "data", "pass": "dataset", "config": {"path": str(text_jsonl), "task": "causal-lm"}},
            {"id": "ort", "pass": "lower", "config": {"target": "onnxruntime-cpu"}},
            {"id": "ort-eval", "pass": "evaluate", "config": {"max_length": 32}},
            {"id": "ort-q", "pass": "quantize", "inputs": {"model": "ort"}, "config": {"policy": "int8", "calibration_samples": 8, "max_length": 32}},
            {"id": "ort-q-eval", "pass": "evaluate", "config": {"max_length": 32}},
            {"id": "package", "pass": "package"},
        ],
    }
    result = run_pipeline(recipe, out=tmp_path, quiet=True)
    _, metrics = read_run(result.run_dir)
    fp32 = metrics["llama-fp32"]["targets"]["onnxruntime-cpu"]
    vocab = 42
    assert 1 < fp32["perplexity"] < 2 * vocab  # a random model is near-uniform over the vocabulary
    assert fp32["windows"] > 3 and fp32["window_tokens"] == 32
    assert metrics["llama-int8"]["targets"]["onnxruntime-cpu"]["int8_linears"] > 0
    # the study table for decoders: perplexity, and the paired ratio on shared equal-length windows is the ratio itself
    from bench.versus import main

    assert main([str(result.run_dir), "ort-eval"]) == 0
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]}
    int8 = metrics["llama-int8"]["targets"]["onnxruntime-cpu"]["perplexity"]
    assert rows["ort-q-eval"][7].startswith(f"{int8:.1f} (") and rows["ort-eval"][-1].strip(" |") == "—"
    assert rows["ort-q-eval"][-1].strip(" |").startswith(f"x{int8 / fp32['perplexity']:.3f} (")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tailorfit.pipeline.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_cli_inspect_passes_targets(classification_run):
    out, result = classification_run
    r = _cli("inspect", str(result.run_dir))
    assert r.returncode == 0 and "tiny-int8" in r.stdout and "openvino-cpu" in r.stdout
    assert ("caveat: " in r.stdout) == bool(result.manifest["caveats"])
    r = _cli("passes")
    assert r.returncode == 0 and "quantize" in r.stdout and "calibration_samples" in r.stdout
    r = _cli("targets")
    assert r.returncode == 0 and "openvino-cpu" in r.stdout and "onnxruntime-cpu" in r.stdout


def test_versus_table_pairs_every_evaluation_with_the_reference(classification_run, capsys):
    """The study table: each evaluate step's accuracy and its paired change vs the reference step, the same change
    the package step records; a step that is not an evaluation is refused in one line."""
    from bench.versus import main

    out, result = classification_run
    _, metrics = read_run(result.run_dir)
    assert main([str(result.run_dir), "openvino-fp32-eval"]) == 0
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"openvino-fp32-eval", "openvino-int8-eval", "onnxruntime-fp32-eval", "onnxruntime-int8-eval"}
    assert rows["openvino-fp32-eval"][-1].strip(" |") == "—"
    change = metrics["tiny-int8"]["targets"]["openvino-cpu"]["versus"]["fp32"]["accuracy_change"]
    assert rows["openvino-int8-eval"][-1].strip(" |").startswith(f"{100 * change['difference']:+.2f} (")
    assert rows["openvino-int8-eval"][7].startswith(f"{100 * metrics['tiny-int8']['targets']['openvino-cpu']['accuracy']:.2f}%")
    assert main([str(result.run_dir), "openvino-fp32"]) == 2
    assert "not a finished evaluate step" in capsys.readouterr().err


def test_image_classification_recipe(tiny_vit, digits_jsonl, tmp_path):
    recipe = {
        "name": "vit", "threads": 2,
        "steps": [
            {"id": "model", "pass": "load", "config": {"path": str(tiny_vit), "task": "image-classification", "name": "vit"}},
            {"id": "data", "pass": "dataset", "config": {"path": str(digits_jsonl), "task": "image-classification"}},
            {"id": "ft", "pass": "finetune", "config": {"max_steps": 3, "batch_size": 16}},
            {"id": "ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
            {"id": "ov-q", "pass": "quantize", "config": {"policy": {"layers": {"0.ffn_up": "fp32"}}, "calibration_samples": 8}},
            {"id": "ov-q-eval", "pass": "evaluate"},
            {"id": "ov-q-bench", "pass": "benchmark", "config": {"runs": 50, "warmup": 2, "attempts": 1}},
            {"id": "package", "pass": "package"},
        ],
    }
    result = run_pipeline(recipe, out=tmp_path, quiet=True)
    _, metrics = read_run(result.run_dir)
    (cand,) = metrics
    m = metrics[cand]["targets"]["openvino-cpu"]
    assert m["examples"] == 30 and 0 <= m["accuracy"] <= 1
    assert m["fp32_linears"] == 1 and m["int8_linears"] >= 8
    assert "image" in m["latency"]
