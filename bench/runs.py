"""The recipe's step outputs (from its finished run folder when it matches the recipe, else by running it) and the
extra tailorfit branches the bench compares against (OpenVINO at bf16, ONNX Runtime and torch-cpu lowerings).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tailorfit.pipeline import load_recipe, read_run, run_pipeline
from tailorfit.pipeline.cache import Cache
from tailorfit.pipeline.handles import Handle
from tailorfit.pipeline.models.handles import Dataset, HFModel, Lowered
from tailorfit.pipeline.host import default_threads, has_native

log = logging.getLogger("tailorfit.bench")


@dataclass
class RecipeRun:
    name: str
    raw: dict[str, Any]  # the recipe as written
    run_dir: Path
    manifest: dict[str, Any]
    cache: Cache
    outputs: dict[str, Handle]  # step id -> handle
    threads: int
    seed: int

    def steps(self, pass_name: str) -> list[dict[str, Any]]:
        return [s for s in self.raw["steps"] if s["pass"] == pass_name]

    def step_id(self, pass_name: str) -> str:
        return self.steps(pass_name)[0].get("id", pass_name)

    @property
    def finetuned(self) -> HFModel:
        return self.outputs[self.step_id("finetune")]

    def finetuned_config(self) -> dict[str, Any]:
        """The fine-tuned model's transformers config (its shape and label count)."""
        return json.loads((self.finetuned.path / "config.json").read_text())

    @property
    def data(self) -> Dataset:
        return self.outputs[self.step_id("dataset")]

    def evaluate_config(self) -> dict[str, Any]:
        """The recipe's own test-split evaluation settings: every entry is evaluated the same way."""
        return dict(self.steps("evaluate")[0].get("config", {}))

    def int8_config(self) -> dict[str, Any]:
        """The recipe's fully-INT8 quantize settings (calibration rows and length), reused by every INT8 peer."""
        for s in self.steps("quantize"):
            if s.get("config", {}).get("policy", "int8") == "int8":
                return dict(s.get("config", {}))
        return {"policy": "int8"}

    def packaged(self) -> list[Lowered]:
        """The final handle of every branch the recipe's package step took, in recipe order."""
        package = self.manifest["steps"].get("package", {})
        return [self.outputs[sid] for sid in package.get("inputs", {}).get("models", []) if sid in self.outputs]


def recipe_run(recipe: Path, out: Path) -> RecipeRun:
    parsed, raw = load_recipe(recipe)
    run_dir = out / parsed.name
    found = _finished_outputs(run_dir, raw)
    if found is None:
        log.info("running %s (its run folder is missing, unfinished or from another recipe version)", recipe)
        result = run_pipeline(recipe, out=out, quiet=False)
        manifest, outputs = result.manifest, result.outputs
    else:
        manifest, outputs = found
    return RecipeRun(parsed.name, raw, run_dir, manifest, Cache(Path(manifest["cache"])), outputs, parsed.threads or default_threads(), parsed.seed)


def _finished_outputs(run_dir: Path, raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Handle]] | None:
    """The handles a finished run of exactly this recipe left in the cache, or None (then the recipe must run):
    reading them back needs no model of the recipe loaded."""
    if not (run_dir / "manifest.json").is_file():
        return None
    manifest, _ = read_run(run_dir)
    if manifest.get("status") != "finished" or json.dumps(manifest.get("recipe"), sort_keys=True) != json.dumps(raw, sort_keys=True):
        return None
    cache = Cache(Path(manifest["cache"]))
    outputs = {}
    for sid, step in manifest["steps"].items():
        if "skipped" in step:
            continue
        try:
            handle = cache.lookup(step["pass"], step["key"])
        except ValueError:  # an entry written by an older tailorfit whose handle no longer validates
            handle = None
        if handle is None:
            return None
        outputs[sid] = handle
    return manifest, outputs


def extra_branches(run: RecipeRun, out: Path) -> dict[str, Lowered]:
    """tailorfit's own artifacts the recipe does not build: the unpruned model on OpenVINO at bf16 (the CPU's default, if it has bf16),
    its ONNX lowering (the ORT peer's input) and the FP32 / INT8 pairs on torch-cpu (eager) and torch-inductor-cpu. Run as a recipe sharing the
    fine-tuned model's cache entries, so these are built once (and hit minilm-three-targets' entries where it ran)."""
    base = [s for s in run.raw["steps"] if s["pass"] in ("load", "dataset", "finetune")]
    tuned, data = run.step_id("finetune"), run.step_id("dataset")
    evaluate = run.evaluate_config()

    def lower(sid: str, **config: Any) -> dict[str, Any]:
        return {"id": sid, "pass": "lower", "inputs": {"model": tuned}, "config": config}

    def evaluated(sid: str) -> dict[str, Any]:
        return {"id": f"{sid}-eval", "pass": "evaluate", "inputs": {"model": sid, "data": data}, "config": evaluate}

    steps = [
        *base,
        # OpenVINO's CPU default, on a CPU that has bf16 (without, it computes in f32: the reference again)
        *([lower("ov-bf16", target="openvino-cpu", inference_precision="bf16"), evaluated("ov-bf16")] if has_native("bf16") else []),
        lower("ort-fp32", target="onnxruntime-cpu"),
        lower("pt-fp32", target="torch-cpu"), evaluated("pt-fp32"),
        {"id": "pt-int8", "pass": "quantize", "inputs": {"model": "pt-fp32", "data": data}, "config": run.int8_config()}, evaluated("pt-int8"),
        lower("inductor-fp32", target="torch-inductor-cpu"), evaluated("inductor-fp32"),
        {"id": "inductor-int8", "pass": "quantize", "inputs": {"model": "inductor-fp32", "data": data}, "config": run.int8_config()}, evaluated("inductor-int8"),
    ]
    recipe = {"name": f"{run.name}-bench-extras", "seed": run.seed, "threads": run.threads, "steps": steps}
    outputs = run_pipeline(recipe, out=out, cache_dir=run.cache.root, quiet=False).outputs
    return {sid: h for sid, h in outputs.items() if isinstance(h, Lowered)}
