"""How search cost grows with model size: the recipe's search settings run for the same small budget on its own
super-network and on a 12-layer BERT-base-sized model built in code (random weights, the recipe model's tokenizer).

Random weights leave accuracy at chance, but what a candidate costs (extract, lower, quantize, evaluate on the
validation split, time on the target) does not depend on what the weights learned: it is the cost this measures.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tailorfit.pipeline import run_pipeline
from tailorfit.pipeline.search.store import EvaluationStore
from tailorfit.pipeline.models.loading import load_preprocessor

from .runs import RecipeRun

BERT_BASE = "bert-base-random"


def build_bert_base(run: RecipeRun, folder: Path) -> Path:
    """BERT-base's shape (12 layers, hidden 768, 12 heads, FFN 3072), seeded random weights, saved once."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(run.seed)
    tok = load_preprocessor(run.finetuned)
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, num_labels=run.finetuned.num_labels))
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    tok.save_pretrained(partial)
    partial.rename(folder)
    return folder


def scaling_recipe(run: RecipeRun, bert_dir: Path, budget: int) -> dict[str, Any]:
    """The recipe's steps up to its super-network, a super-network of the BERT-base model with the same choices scaled
    to its size, and one search of ``budget`` measured candidates (all random: ``initial == budget``) on each."""
    upstream = [s for s in run.raw["steps"] if s["pass"] in ("load", "dataset", "finetune", "supernet", "supernet-finetune")]
    supernet_step = run.steps("supernet")[0]
    own = [s.get("id", s["pass"]) for s in upstream if s["pass"].startswith("supernet")][-1]
    source = run.finetuned_config()
    choices = dict(supernet_step.get("config", {}))
    ffn_scale, layer_scale = 3072 / source["intermediate_size"], 12 / source["num_hidden_layers"]
    if "ffn_choices" in choices:
        choices["ffn_choices"] = [round(c * ffn_scale) for c in choices["ffn_choices"]]
    if "min_layers" in choices:
        choices["min_layers"] = round(choices["min_layers"] * layer_scale)
    search = {**run.steps("search")[0].get("config", {}), "budget": budget, "initial": budget}
    data = run.step_id("dataset")
    steps = [
        *upstream,
        {"id": f"{BERT_BASE}-load", "pass": "load", "config": {"path": str(bert_dir.resolve()), "task": run.finetuned.task, "name": BERT_BASE}},
        {"id": f"{BERT_BASE}-supernet", "pass": "supernet", "inputs": {"model": f"{BERT_BASE}-load"}, "config": choices},
        {"id": "scaling-recipe-model", "pass": "search", "inputs": {"supernet": own, "data": data}, "config": search},
        {"id": f"scaling-{BERT_BASE}", "pass": "search", "inputs": {"supernet": f"{BERT_BASE}-supernet", "data": data}, "config": search},
    ]
    return {"name": f"{run.name}-search-scaling", "seed": run.seed, "threads": run.threads, "steps": steps}


def measure_search_scaling(run: RecipeRun, root: Path, budget: int) -> dict[str, Any]:
    """Per model: its size, the median seconds of one measured candidate (and by stage), and the search wall time
    that implies at the recipe's own budget."""
    bert_dir = build_bert_base(run, root / "scaling" / BERT_BASE)
    result = run_pipeline(scaling_recipe(run, bert_dir, budget), out=root, cache_dir=run.cache.root, quiet=False)
    recipe_budget = run.steps("search")[0].get("config", {}).get("budget")
    shapes = {run.name: run.finetuned_config(), BERT_BASE: json.loads((bert_dir / "config.json").read_text())}
    out = {}
    for label, sid in ((run.name, "scaling-recipe-model"), (BERT_BASE, f"scaling-{BERT_BASE}")):
        store = EvaluationStore(result.outputs[sid].path / "evaluations.sqlite", layout=None)
        try:
            records = list(store.records())
        finally:
            store.close()
        searched = [r for r in records if r["role"] == "search"]
        median = float(np.median([r["seconds"] for r in searched]))
        stages = {k: float(np.median([r["metrics"]["seconds_by_stage"][k] for r in searched])) for k in searched[0]["metrics"]["seconds_by_stage"]}
        shape = shapes[label]
        out[label] = {
            "layers": shape["num_hidden_layers"], "hidden": shape["hidden_size"], "ffn": shape["intermediate_size"],
            "params": max(r["metrics"]["params"] for r in records if r["role"] == "baseline"), "candidates": len(searched),
            "median_seconds_per_candidate": median, "median_seconds_by_stage": stages,
            "projected_search_seconds": median * recipe_budget if recipe_budget else None,
        }
    return {"budget": budget, "recipe_budget": recipe_budget, "models": out}
