"""Bad input ends in one line saying what is wrong and how to fix it, a non-zero exit, and nothing half-written."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def run_cli(tmp_path: Path, recipe: dict | str) -> subprocess.CompletedProcess:
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    return subprocess.run(
        [sys.executable, "-m", "tailorfit.pipeline.cli", "run", str(path), "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )


def assert_clean_failure(result: subprocess.CompletedProcess, tmp_path: Path, message: str) -> None:
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tailorfit: error: ") and " — " in lines[0]  # what is wrong — how to fix it
    assert message in lines[0], lines[0]
    cache = tmp_path / "out" / ".cache"
    leftovers = [p for p in cache.rglob("*") if p.is_dir() and p.parent.parent == cache and not (p / "handle.json").exists()] if cache.exists() else []
    assert not leftovers, leftovers  # no partial cache entries
    candidates = list((tmp_path / "out").rglob("candidates"))
    assert not candidates


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _steps(model: Path | str, data: Path | str, **lower) -> list[dict]:
    return [
        {"id": "model", "pass": "load", "config": {"path": str(model)}},
        {"id": "data", "pass": "dataset", "config": {"path": str(data)}},
        {"id": "ft", "pass": "finetune", "config": {"max_steps": 1}},
        {"id": "low", "pass": "lower", "config": {"target": "openvino-cpu", **lower}},
    ]


def test_missing_model_path(tmp_path, sentences_csv):
    r = run_cli(tmp_path, {"name": "x", "steps": _steps("/no/such/model", sentences_csv)})
    assert_clean_failure(r, tmp_path, "model path '/no/such/model' does not exist")


def test_unsupported_architecture(tmp_path, sentences_csv):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "t5", "num_layers": 2}')
    r = run_cli(tmp_path, {"name": "x", "steps": _steps(tmp_path / "m", sentences_csv)})
    assert_clean_failure(r, tmp_path, "unsupported architecture 't5'")


def test_unsupported_task(tmp_path, tiny_bert, sentences_csv):
    steps = _steps(tiny_bert, sentences_csv)
    steps[0]["config"]["task"] = "translation"
    assert_clean_failure(run_cli(tmp_path, {"name": "x", "steps": steps}), tmp_path, "field 'task'")


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("name: x\nsteps: [ {pass: load", "not valid YAML"),
        ({"name": "x", "steps": [{"pass": "prune"}]}, "unknown pass 'prune'"),
        ({"name": "x", "steps": [{"pass": "benchmark", "config": {"runs": "many"}}]}, "field 'runs'"),
        ({"name": "x", "steps": [{"pass": "benchmark"}]}, "needs a Lowered input but no earlier step produces one"),
        ({"name": "x", "steps": [{"id": "a", "pass": "benchmark", "inputs": {"model": "b"}}, {"id": "b", "pass": "benchmark", "inputs": {"model": "a"}}]}, "cycle"),
        ({"name": "bad name!", "steps": [{"pass": "benchmark"}]}, "malformed recipe: name"),
    ],
)
def test_malformed_recipe(tmp_path, recipe, message):
    assert_clean_failure(run_cli(tmp_path, recipe), tmp_path, message)


def test_unknown_target(tmp_path, tiny_bert, sentences_csv):
    r = run_cli(tmp_path, {"name": "x", "steps": _steps(tiny_bert, sentences_csv, target="gpu-9000")})
    assert_clean_failure(r, tmp_path, "unknown target 'gpu-9000'")


def test_policy_naming_missing_layer(tmp_path, tiny_bert, sentences_csv):
    steps = _steps(tiny_bert, sentences_csv) + [{"pass": "quantize", "config": {"policy": {"layers": {"12.ffn_up": "fp32"}}}}]
    assert_clean_failure(run_cli(tmp_path, {"name": "x", "steps": steps}), tmp_path, "names layer 12, but the model has 2 layers")


def test_dataset_missing_column(tmp_path, tiny_bert):
    data = _csv(tmp_path / "d.csv", [{"review": f"text {i}", "label": i % 2} for i in range(50)])
    r = run_cli(tmp_path, {"name": "x", "steps": _steps(tiny_bert, data)})
    assert_clean_failure(r, tmp_path, "the data has no column 'text' (columns: review, label)")


def test_dataset_with_one_class(tmp_path, tiny_bert):
    data = _csv(tmp_path / "d.csv", [{"text": f"text {i}", "label": "pos"} for i in range(50)])
    r = run_cli(tmp_path, {"name": "x", "steps": _steps(tiny_bert, data)})
    assert_clean_failure(r, tmp_path, "has one class only ('pos')")
