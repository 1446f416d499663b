"""distill (a student from its teacher) and choose (the fastest finalist that still holds), on tiny models."""
from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from tailorfit.pipeline import TailorfitError, run_pipeline
from tailorfit.pipeline.models.loading import load_torch_model
from test_search import _search_recipe

TINY = {"max_length": 24, "batch_size": 16}


def _supernet_steps(tiny_bert, sentences_csv, ft_steps: int) -> list[dict]:
    """Load, data, a fine-tune of ``ft_steps`` and a super-network over it, on the tiny BERT."""
    return [
        {"id": "model", "pass": "load", "config": {"path": str(tiny_bert), "task": "text-classification", "name": "tiny"}},
        {"id": "data", "pass": "dataset", "config": {"path": str(sentences_csv)}},
        {"id": "ft", "pass": "finetune", "config": {"max_steps": ft_steps, "learning_rate": 3e-3, **TINY}},
        {"id": "super", "pass": "supernet", "config": {"ffn_step": 16, "min_layers": 1}},
    ]


def test_a_distilled_subnetwork_recovers_accuracy_its_teacher_has(tiny_bert, sentences_csv, tmp_path):
    recipe = {"name": "distill", "seed": 0, "threads": 2, "steps": [
        *_supernet_steps(tiny_bert, sentences_csv, 60),
        {"id": "small", "pass": "extract", "config": {"subnet": "smallest"}},
        {"id": "distilled", "pass": "distill", "inputs": {"student": "small", "teacher": "ft"}, "config": {"epochs": 2, "max_steps": 40, "learning_rate": 3e-3, **TINY}},
        {"id": "ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
        {"id": "ov-eval", "pass": "evaluate", "config": {"split": "validation", "max_length": 24, "bootstrap": 200}},
    ]}
    result = run_pipeline(recipe, out=tmp_path, quiet=True)
    record = json.loads((result.outputs["distilled"].path / "distillation.json").read_text())
    assert record["teacher"] == "tiny" and record["steps"] == 40 and record["hidden_states"] and len(record["loss"]) == 40
    assert record["after"] > record["before"] + 0.1, record  # the cut-down student starts near chance; its teacher knows the task
    assert result.outputs["distilled"].distillation["after"] == record["after"]
    # the runtime agrees with PyTorch on the distilled weights (same validation rows)
    assert result.outputs["ov-eval"].metrics["accuracy"] == pytest.approx(record["after"], abs=0.02)


def test_a_student_of_the_teachers_shape_is_not_trained_and_keeps_the_better_weights(tiny_bert, sentences_csv, tmp_path):
    recipe = {"name": "same-shape", "seed": 0, "threads": 2, "steps": [
        *_supernet_steps(tiny_bert, sentences_csv, 30),
        # a few sandwich steps at a high rate move the largest sub-network's weights away from the teacher's
        {"id": "sandwich", "pass": "supernet-finetune", "config": {"max_steps": 4, "learning_rate": 3e-2, "random_subnets": 0, **TINY}},
        {"id": "largest", "pass": "extract", "config": {"subnet": "largest"}},
        {"id": "small", "pass": "extract", "inputs": {"supernet": "sandwich"}, "config": {"subnet": "smallest"}},
        {"id": "kd-largest", "pass": "distill", "inputs": {"student": "largest", "teacher": "ft"}, "config": {"max_steps": 5, **TINY}},
        {"id": "kd-small", "pass": "distill", "inputs": {"student": "small", "teacher": "ft"}, "config": {"max_steps": 5, **TINY}},
    ]}
    result = run_pipeline(recipe, out=tmp_path, quiet=True)
    record = result.outputs["kd-largest"].distillation
    assert record["steps"] == 0 and record["same_shape_as_teacher"], record
    assert record["after"] == max(record["before"], record["teacher_score"]) and record["took_teacher_weights"] == (record["teacher_score"] > record["before"])
    kept = load_torch_model(result.outputs["kd-largest"]).state_dict()
    source = load_torch_model(result.outputs["ft" if record["took_teacher_weights"] else "largest"]).state_dict()
    assert kept.keys() == source.keys() and all(torch.equal(kept[k], source[k]) for k in kept)
    assert (result.outputs["kd-largest"].path / "architecture.json").is_file()  # still the sub-network the search picked
    # a smaller student is trained as before
    assert result.outputs["kd-small"].distillation["steps"] == 5 and "same_shape_as_teacher" not in result.outputs["kd-small"].distillation


def test_distill_refuses_a_student_that_is_its_own_teacher(tiny_bert, sentences_csv, tmp_path):
    recipe = {"name": "self", "steps": [
        {"id": "model", "pass": "load", "config": {"path": str(tiny_bert), "task": "text-classification"}},
        {"id": "data", "pass": "dataset", "config": {"path": str(sentences_csv)}},
        {"id": "ft", "pass": "finetune", "config": {"max_steps": 2, **TINY}},
        {"id": "d", "pass": "distill", "config": {"max_steps": 2, **TINY}},
    ]}
    with pytest.raises(TailorfitError, match="teacher is its student"):
        run_pipeline(recipe, out=tmp_path, quiet=True)


def test_finalists_are_distilled_measured_again_and_the_fastest_that_holds_is_packaged(tiny_bert, sentences_csv, tmp_path):
    recipe = _search_recipe(tiny_bert, sentences_csv, name="finalists", estimate=False)  # as the default recipe: no PyTorch estimate
    steps = [s for s in recipe["steps"] if s["id"] in ("model", "data", "ft", "ov-fp32", "supernet", "search")]
    steps.insert(steps.index(next(s for s in steps if s["id"] == "supernet")),
                 {"id": "ov-fp32-val", "pass": "evaluate", "inputs": {"model": "ov-fp32"}, "config": {"split": "validation", "max_length": 24, "bootstrap": 200}})
    for rank in (1, 2, 50):  # rank 50 never exists: its chain is skipped, and a skipped finalist must not break choose or the model card
        steps += [
            {"id": f"pick{rank}", "pass": "select", "inputs": {"search": "search"}, "config": {"rule": "fastest", "max_accuracy_drop": 100.0, "rank": rank}},
            {"id": f"pick{rank}-kd", "pass": "distill", "inputs": {"teacher": "ft"}, "config": {"max_steps": 10, "learning_rate": 3e-3, **TINY}},
            {"id": f"pick{rank}-ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
            {"id": f"pick{rank}-int8", "pass": "quantize", "config": {"policy": "selected", "calibration_samples": 8, "max_length": 24}},
            {"id": f"pick{rank}-val", "pass": "evaluate", "config": {"split": "validation", "max_length": 24, "bootstrap": 200}},
        ]
    steps += [
        {"id": "chosen", "pass": "choose", "inputs": {"candidates": ["pick1-val", "pick2-val", "pick50-val"], "reference": "ov-fp32-val"}, "config": {"max_accuracy_drop": 100.0, "sequence_length": 24}},
        {"id": "chosen-test", "pass": "evaluate", "config": {"max_length": 24, "bootstrap": 200}},
        {"id": "package", "pass": "package"},
    ]
    result = run_pipeline({**recipe, "steps": steps}, out=tmp_path, quiet=True)
    finalists = result.outputs["chosen"].metrics["finalists"]
    ran = [r for r in (1, 2) if f"pick{r}-val" in result.outputs]  # a tiny search may leave a single Pareto point
    assert "pick50-val" not in result.outputs and len(finalists) == len(ran) >= 1 and all(f["distillation"]["steps"] == (0 if f["distillation"].get("same_shape_as_teacher") else 10) for f in finalists)
    assert result.outputs["chosen"].candidate == min(finalists, key=lambda f: (f["latency_ratio"], -f["accuracy"]))["candidate"]
    # the finalists that hold were timed again, interleaved with the reference: the pick rests on that, not on the search's timings
    assert all(f["latency_ratio"] > 0 and f["search_latency_ratio"] > 0 for f in finalists)
    assert "timed interleaved with the reference (50 rounds at 24 tokens" in result.outputs["chosen"].metrics["chosen_by"]
    assert result.outputs["chosen-test"].metrics["split"] == "test"
    packaged = json.loads((result.run_dir / "metrics.json").read_text())
    picked = [c for c in packaged.values() if "selection" in c]
    assert len(picked) == 1 and "distillation" in picked[0]  # the finalists measured on validation are not shipped
    card = (result.run_dir / "candidates" / picked[0]["candidate"] / "README.md").read_text()
    assert "Distilled from `tiny`" in card and f"among {len(finalists)} finalists (validation split" in card
    assert "`ft` (finetune)" in card and "pick50" not in card and "cheap PyTorch estimate" not in card
    search = result.outputs["search"].path
    assert json.loads((search / "estimate_vs_target.json").read_text())["kendall_tau"] is None
    stored = [json.loads(m) for (m,) in sqlite3.connect(search / "evaluations.sqlite").execute("SELECT metrics FROM candidates")]
    assert stored and not any("accuracy_estimate" in m or "estimate" in m["seconds_by_stage"] for m in stored)  # the lineage lists the steps that made it, not the skipped ones
