"""What the sections share: the recipe's run, the entries of the artifact table, and one interleaved latency
measurement of all of them (computed on first use, so ``--sections ceiling`` alone still has what it needs)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from tailorfit.passes.benchmark import synthetic_inputs
from tailorfit.pipeline.cache import Cache
from tailorfit.pipeline.models.handles import Lowered
from tailorfit.targets import get_target
from tailorfit.targets.timing import InterleavedLatency, measure_interleaved

from .measure import memory_table
from .peers import build_peers
from .runs import RecipeRun, extra_branches, recipe_run

log = logging.getLogger("tailorfit.bench")
REFERENCE = "OpenVINO FP32 (f32)"  # every ratio and paired change is against this entry


@dataclass(frozen=True)
class Entry:
    name: str  # row label
    origin: str  # "tailorfit" (packaged by the recipe, or built by its passes here) or "peer"
    how: str  # how it was made, one line
    model: Lowered  # evaluated on the test split on its runtime


@dataclass(frozen=True)
class Settings:
    rounds: int  # interleaved latency rounds
    warmup: int
    lengths: tuple[int, ...]  # sequence lengths timed; the first is the headline one
    memory_runs: int  # inferences in each peak-memory process
    search_seeds: int  # seeds per algorithm in the search-efficiency comparison
    scaling_budget: int  # measured candidates per model in the model-size scaling searches
    max_other_load: float = 0.5  # cores' worth of other CPU load above which timing is retried (then flagged)


FULL = Settings(rounds=200, warmup=20, lengths=(128, 64), memory_runs=50, search_seeds=3, scaling_budget=6)
QUICK = Settings(rounds=40, warmup=5, lengths=(128, 64), memory_runs=10, search_seeds=1, scaling_budget=2)


class BenchContext:
    def __init__(self, recipe: Path, settings: Settings, out_dir: Path, root: Path, runs_dir: Path):
        self.recipe, self.settings = recipe, settings
        self.out_dir = out_dir  # this report's folder
        self.root = root  # the bench folder: peer cache and the extra branches' run folder live here, across reports
        self.runs_dir = runs_dir  # where the recipe's own run folder is (tailorfit run's --out)

    @cached_property
    def run(self) -> RecipeRun:
        return recipe_run(self.recipe, self.runs_dir)

    @property
    def threads(self) -> int:
        return self.run.threads

    @cached_property
    def entries(self) -> list[Entry]:
        run = self.run
        packaged = run.packaged()
        reference = next((m for m in packaged if m.target == "openvino-cpu" and m.precision == "fp32" and m.inference_precision == "f32" and m.source.selection is None), None)
        if reference is None:
            raise SystemExit(f"{self.recipe} packages no unpruned FP32 model on openvino-cpu at f32: the bench needs it as its reference")
        extras = extra_branches(run, self.root)
        peers = build_peers(run, reference, extras["ort-fp32"], Cache(self.root / ".cache"))
        steps = {s["key"]: sid for sid, s in run.manifest["steps"].items() if "key" in s}
        entries = [
            Entry(REFERENCE, "tailorfit", f"the recipe's unpruned FP32 model (step {steps.get(reference.key, '?')}), OpenVINO at f32", reference),
            *([Entry("OpenVINO FP32 at bf16 (CPU default)", "tailorfit", "the same IR compiled with OpenVINO's CPU default inference precision", extras["ov-bf16-eval"])]
              if "ov-bf16-eval" in extras else []),
            Entry("optimum-intel INT8", "peer", "OVModelForSequenceClassification(export=True) + OVQuantizer, static OVQuantizationConfig", peers["optimum-intel-int8"]),
            Entry("NNCF accuracy control INT8", "peer", "nncf.quantize_with_accuracy_control, max drop 1 pt absolute on validation", peers["nncf-accuracy-control"]),
            Entry("ONNX Runtime quantize_static INT8", "peer", "onnxruntime.quantization.quantize_static, defaults, on tailorfit's FP32 ONNX", peers["ort-quantize-static"]),
        ]
        for m in packaged:
            if m is not reference:
                entries.append(Entry(f"tailorfit {m.candidate}", "tailorfit", f"packaged by the recipe (step {steps.get(m.key, '?')}), {m.target}", m))
        entries += [
            Entry("torch-cpu FP32", "tailorfit", "torch.export .pt2, PyTorch eager", extras["pt-fp32-eval"]),
            Entry("torch-cpu INT8", "tailorfit", "Neural Compressor PT2E static INT8 .pt2, PyTorch eager (quantize/dequantize in float)", extras["pt-int8-eval"]),
            Entry("torch-inductor-cpu FP32", "tailorfit", "the torch-cpu .pt2 served by torch.compile (inductor, frozen weights)", extras["inductor-fp32-eval"]),
            Entry("torch-inductor-cpu INT8", "tailorfit", "the torch-cpu INT8 .pt2 served by torch.compile: oneDNN int8 linears", extras["inductor-int8-eval"]),
        ]
        return entries

    @cached_property
    def _ceilings(self) -> tuple[dict[str, Any], dict[str, list[str]]]:
        from .ceiling import matmul_ceilings

        return matmul_ceilings(self.threads, self.run.seed)

    @property
    def ceilings_executed(self) -> dict[str, list[str]]:
        return self._ceilings[1]

    @cached_property
    def latency(self) -> dict[int, InterleavedLatency]:
        """All entries loaded in this one process and timed interleaved at batch 1, per sequence length; this CPU's
        matmul ceilings (section "Distance to the limit") run in the same rounds, so their ratios hold too."""
        s = self.settings
        sessions = {e.name: get_target(e.model.target).session(e.model.files, self.threads, e.model.inference_precision) for e in self.entries}
        rng = np.random.default_rng(self.run.seed)
        out = {}
        for length in s.lengths:
            runs = dict(self._ceilings[0])
            for e in self.entries:
                run, inputs = sessions[e.name], synthetic_inputs(e.model, length, rng)
                runs[e.name] = lambda run=run, inputs=inputs: run(inputs)
            log.info("timing %d entries interleaved (shuffled per round) at %d tokens, %d rounds", len(runs), length, s.rounds)
            out[length] = measure_interleaved(runs, warmup=s.warmup, rounds=s.rounds, max_other_load=s.max_other_load)
        return out

    @cached_property
    def memory(self) -> dict[str, Any]:
        log.info("peak memory: one fresh process per entry")
        return memory_table({e.name: e.model for e in self.entries}, self.threads, self.settings.lengths[0], self.settings.memory_runs)
