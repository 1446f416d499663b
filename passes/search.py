"""search: joint multi-objective search of sub-network architecture and per-layer precision policy.

Consumes: ``SuperNet`` and ``Dataset`` (validation split). Produces: ``SearchResult`` — ``evaluations.sqlite``
(every measured candidate), the Pareto front (``pareto.csv`` / ``pareto.json``), ``history.json`` (hypervolume
and predictor quality per iteration), ``estimate_vs_target.json`` and plots (PNG and HTML).

A candidate is measured for real by the same passes a recipe would run — extract, lower, quantize with its
policy, evaluate on the validation split on the target runtime — plus its latency on the target (batch 1) and
the cheap estimate: the extracted weights in PyTorch with the policy simulated by fake quantization. The
recipe picks which accuracy drives the search; both are recorded so their rank agreement is reported.
The unpruned model in FP32 and fully INT8 is measured first, in the same run, as the baselines. Latency is
timed round-robin with the unpruned FP32 model kept loaded, and the search optimises that paired ratio.
A killed search resumes from the store: the search replays deterministically, answering stored candidates.
"""
from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext
from tailorfit.pipeline.data import chunks, encode_rows, read_split
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.evaluation_store import EvaluationStore
from tailorfit.pipeline.fake_quant import simulated_policy
from tailorfit.pipeline.families import family_by_name
from tailorfit.pipeline.genome import Candidate, Genome
from tailorfit.pipeline.handles import Dataset, Lowered, SearchResult, SuperNet
from tailorfit.pipeline.models import ARCHITECTURE, input_names, load_preprocessor, load_torch_model
from tailorfit.pipeline.policy import QuantizationPolicy
from tailorfit.pipeline.multiobjective import IntegerProblem, SearchSettings, run_search
from tailorfit.pipeline.search_report import OBJECTIVES, objective_matrix, write_report
from tailorfit.targets import TARGETS, get_target
from tailorfit.targets.timing import measure_interleaved

from .benchmark import synthetic_inputs
from .evaluate import Evaluate, EvaluateConfig
from .extract import Extract, ExtractConfig
from .lower import Lower, LowerConfig
from .quantize import Quantize, QuantizeConfig


class SearchConfig(PassConfig, SearchSettings):
    target: str = Field(default="openvino-cpu", description=f"where candidates are lowered and measured: {', '.join(TARGETS)}")
    objectives: list[Literal["accuracy", "latency", "size", "params", "macs", "non_embedding_params"]] = Field(
        default=["accuracy", "latency"], min_length=2, description="accuracy is maximised, the rest minimised")
    accuracy_from: Literal["target", "supernet"] = Field(
        default="target", description="target: the quantized model on the target runtime; supernet: inherited weights in PyTorch, policy fake-quantized")
    precisions: list[Literal["fp32", "int8"]] = Field(default=["fp32", "int8"], min_length=1, description="precision genes per layer and linear group")
    max_accuracy_drop: float | None = Field(default=None, ge=0, description="constraint: validation accuracy points below the unpruned FP32 model")
    max_latency_ms: float | None = Field(default=None, gt=0, description="constraint: median latency at sequence_length")
    max_size_mb: float | None = Field(default=None, gt=0, description="constraint: model files on disk")
    sequence_length: int = Field(default=128, ge=1, description="tokens per input when timing (batch 1)")
    latency_runs: int = Field(default=50, ge=10, description="timed rounds per candidate, each interleaved with the unpruned FP32 model")
    calibration_samples: int = Field(default=64, ge=1, description="quantization calibration rows per candidate")
    near_largest: float = Field(default=0.5, ge=0, le=1, description="share of random candidates drawn near the unpruned architecture (the rest: uniform depth)")
    hv_accuracy_margin: float = Field(default=10.0, gt=0, description="hypervolume reference: this many accuracy points below the FP32 baseline")
    store: Path | None = Field(default=None, description="an evaluation store to resume or warm-start from (default: one in the step's folder)")
    seed: int | None = Field(default=None, description="default: the recipe's seed")  # type: ignore[assignment]

    @model_validator(mode="after")
    def _consistent(self) -> "SearchConfig":
        if self.target not in TARGETS:
            raise ValueError(f"unknown target '{self.target}'; use one of: {', '.join(TARGETS)}")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError("objectives are listed twice")
        if self.initial > self.budget:
            raise ValueError(f"initial population {self.initial} exceeds the budget {self.budget}")
        return self


class Search(Pass):
    name = "search"
    version = 3  # 3: latency as a ratio to the unpruned FP32 model timed interleaved with each candidate
    Config = SearchConfig
    packages = ("torch", "transformers", "openvino", "nncf", "onnxruntime", "pymoo", "scikit-learn")

    def fingerprint(self) -> str:
        # an explicit store is read: what it holds changes the result
        return str(self.config.store.stat().st_mtime_ns) if self.config.store and self.config.store.exists() else ""

    def preflight(self, facts: dict[str, Any]) -> None:
        _refuse_causal_lm(facts.get("task"))

    def run(self, ctx: PassContext, supernet: SuperNet, data: Dataset) -> SearchResult:
        c = self.config
        if data.task != supernet.source.task:
            raise TailorfitError(f"the dataset is for {data.task} but the super-network is a {supernet.source.task} model", "use a dataset of the model's task")
        _refuse_causal_lm(supernet.source.task)
        genome = Genome(supernet.space, tuple(c.precisions))
        store_path = c.store or ctx.work_dir / "evaluations.sqlite"
        store = EvaluationStore(store_path, genome.fingerprint())
        evaluator = CandidateEvaluator(ctx, supernet, data, c)
        try:
            baselines = self._baselines(genome, store, evaluator)
            problem = IntegerProblem(*genome.bounds(), n_obj=len(c.objectives), n_constr=len(_constraints(c)), canonical=genome.canonical,
                                     sample=lambda rng, k: genome.sample(rng, k, c.near_largest))
            settings = SearchSettings(**c.model_dump(include=set(SearchSettings.model_fields)) | {"seed": ctx.seed if c.seed is None else c.seed})
            with ctx.progress(f"measuring candidates on {c.target}", c.budget) as bar:
                def measure(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                    rows = []
                    for g in X:
                        rows.append(_measured(genome, store, evaluator, g, "search"))
                        bar.advance(1)
                    return objective_matrix(rows, c, baselines["fp32"])

                history = run_search(problem, measure, settings, on_iteration=lambda h: write_report(ctx.work_dir, h, store, c, baselines, final=False))
            report = write_report(ctx.work_dir, history, store, c, baselines, final=True)
        finally:
            store.close()
        if c.store:  # keep this run's copy beside its report: the handle must point into the cache
            with sqlite3.connect(store_path) as src, sqlite3.connect(ctx.work_dir / "evaluations.sqlite") as dst:
                src.backup(dst)
        if not report["front"]:
            ctx.log.warning("no measured candidate meets the constraints (%s): nothing to select", ", ".join(f"{k} {getattr(c, k)}" for k in _constraints(c)))
        ctx.log.info("search measured %d candidates; %d on the Pareto front; hypervolume %.4f", len(history.X), len(report["front"]), report["hypervolume"])
        return SearchResult(path=ctx.work_dir, supernet=supernet, target=c.target, objectives=c.objectives, baselines=baselines, front=report["front"])

    def _baselines(self, genome: Genome, store: EvaluationStore, evaluator: "CandidateEvaluator") -> dict[str, dict[str, Any]]:
        """The unpruned model in FP32 and (when int8 is a gene) fully INT8, measured like every candidate."""
        largest = genome.space.largest()
        out = {}
        for precision in ("fp32", "int8"):
            if precision in genome.precisions:
                resolved = QuantizationPolicy(default=precision).resolve(genome.space.num_layers)
                out[precision] = _measured(genome, store, evaluator, genome.encode(largest, resolved), "baseline")
        if "fp32" not in out:
            raise TailorfitError("the precision genes lack fp32, so the FP32 baseline cannot be measured", "include fp32 in 'precisions'")
        return out


def _refuse_causal_lm(task: str | None) -> None:
    if task == "causal-lm":
        raise TailorfitError("search measures classification accuracy; this model is a causal LM", "search classifiers for now (decoder search with weight-only precisions is planned)")


def _constraints(c: SearchConfig) -> list[str]:
    return [k for k in ("max_accuracy_drop", "max_latency_ms", "max_size_mb") if getattr(c, k) is not None]


def _measured(genome: Genome, store: EvaluationStore, evaluator: "CandidateEvaluator", g: np.ndarray, role: str) -> dict[str, Any]:
    """The stored record of a genome's candidate, measuring it first if it is new."""
    candidate = genome.decode(g)
    record = store.get(candidate.id)
    if record is None:
        t0 = time.perf_counter()
        metrics = evaluator.measure(candidate)
        store.add(candidate, genome.canonical(g).tolist(), metrics, time.perf_counter() - t0, role)
        record = store.get(candidate.id)
    return record


class CandidateEvaluator:
    """Measures one candidate: the real chain of passes on the target, its latency there, and the cheap estimate."""

    def __init__(self, ctx: PassContext, supernet: SuperNet, data: Dataset, config: SearchConfig):
        self.ctx, self.supernet, self.data, self.config = ctx, supernet, data, config
        self.rows = read_split(data, "validation")
        self.family = family_by_name(supernet.source.family)
        self.preprocessor = load_preprocessor(supernet.source)
        self.log = logging.getLogger(f"tailorfit.{ctx.step_id}.candidate")
        self.log.setLevel(logging.WARNING)  # the inner passes' info lines would drown the search's own
        self._reference_model: Lowered | None = None
        self._reference_run = None

    def _stage(self, root: Path, stage: str) -> PassContext:
        """A context for one inner pass, writing under ``root`` (removed once the candidate is recorded)."""
        work = root / stage
        work.mkdir(parents=True)
        return PassContext(step_id=f"{self.ctx.step_id}:{root.name}", work_dir=work, run_dir=self.ctx.run_dir,
                           seed=self.ctx.seed, threads=self.ctx.threads, log=self.log)

    def measure(self, candidate: Candidate) -> dict[str, Any]:
        c = self.config
        shutil.rmtree(self.ctx.work_dir / "inflight", ignore_errors=True)  # a candidate a kill interrupted
        root = self.ctx.work_dir / "inflight" / candidate.id
        timings: dict[str, float] = {}
        t = time.perf_counter()
        dense = Extract(ExtractConfig(subnet=candidate.subnet, seq_len=c.sequence_length, name=candidate.id)).run(self._stage(root, "extract"), supernet=self.supernet)
        architecture = json.loads((dense.path / ARCHITECTURE).read_text())
        timings["extract"] = time.perf_counter() - t
        t = time.perf_counter()
        lowered: Lowered = Lower(LowerConfig(target=c.target)).run(self._stage(root, "lower"), model=dense)
        timings["lower"] = time.perf_counter() - t
        if candidate.quantized:
            t = time.perf_counter()
            quantize = Quantize(QuantizeConfig(policy=candidate.policy, calibration_samples=c.calibration_samples, max_length=c.sequence_length))
            lowered = quantize.run(self._stage(root, "quantize"), model=lowered, data=self.data)
            timings["quantize"] = time.perf_counter() - t
        metrics: dict[str, Any] = {
            "params": architecture["params"], "non_embedding_params": architecture["non_embedding_params"], "macs": architecture["macs"],
            "size_mb": lowered.size_bytes() / 2**20,
        }
        t = time.perf_counter()
        evaluated = Evaluate(EvaluateConfig(split="validation", max_length=c.sequence_length, bootstrap=100)).run(self._stage(root, "evaluate"), model=lowered, data=self.data)
        with open(evaluated.reports["predictions"]) as f:
            metrics["correct"] = "".join(str(r["correct"]) for r in map(json.loads, f))
        metrics["accuracy"] = evaluated.metrics["accuracy"]
        timings["evaluate"] = time.perf_counter() - t
        t = time.perf_counter()
        metrics.update(self._latency(lowered))
        timings["latency"] = time.perf_counter() - t
        t = time.perf_counter()
        metrics["estimate_correct"] = self._estimate(dense, candidate)
        metrics["accuracy_estimate"] = metrics["estimate_correct"].count("1") / len(metrics["estimate_correct"])
        timings["estimate"] = time.perf_counter() - t
        metrics["seconds_by_stage"] = {k: round(v, 3) for k, v in timings.items()}
        shutil.rmtree(self.ctx.work_dir / "inflight", ignore_errors=True)
        return metrics

    def _reference(self) -> Lowered:
        """The unpruned FP32 model on the target, kept loaded: every candidate is timed interleaved with it."""
        if self._reference_model is None:
            folder = self.ctx.work_dir / "reference"
            if not (folder / "lowered.json").is_file():
                tmp = self.ctx.work_dir / "reference.partial"
                shutil.rmtree(tmp, ignore_errors=True)
                dense = Extract(ExtractConfig(subnet="largest", name="reference")).run(self._stage(tmp, "extract"), supernet=self.supernet)
                lowered = Lower(LowerConfig(target=self.config.target)).run(self._stage(tmp, "lower"), model=dense)
                (tmp / "lowered.json").write_text(lowered.model_dump_json())
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
            self._reference_model = Lowered.model_validate_json((folder / "lowered.json").read_text()).relocate(self.ctx.work_dir / "reference.partial", folder)
            self._reference_run = get_target(self.config.target).session(self._reference_model.files, self.ctx.threads, self._reference_model.inference_precision)
        return self._reference_model

    def _latency(self, lowered: Lowered) -> dict[str, float]:
        """Median latency, and its ratio to the unpruned FP32 model timed round-robin with it: the ratio is what the
        search optimises, because on a shared machine medians of separate measurements drift by tens of percent."""
        reference = self._reference()
        run = get_target(lowered.target).session(lowered.files, self.ctx.threads, lowered.inference_precision)
        rng = np.random.default_rng(self.ctx.seed)
        inputs = synthetic_inputs(lowered, self.config.sequence_length, rng)
        ref_inputs = synthetic_inputs(reference, self.config.sequence_length, rng)
        timed = measure_interleaved({"candidate": lambda: run(inputs), "reference": lambda: self._reference_run(ref_inputs)},
                                    warmup=5, rounds=self.config.latency_runs)
        return {"latency_ms": timed.stats["candidate"].median_ms, "reference_latency_ms": timed.stats["reference"].median_ms,
                "latency_ratio": timed.ratio("candidate", "reference"), "latency_other_cpu_load": timed.stats["candidate"].other_cpu_load}

    def _estimate(self, dense, candidate: Candidate) -> str:
        """Per-example correctness of the extracted PyTorch weights with the policy fake-quantized."""
        model = load_torch_model(dense).eval()
        names = input_names(model, dense)
        resolved = candidate.policy.resolve(len(candidate.subnet.kept()))
        out = []
        with torch.inference_mode(), simulated_policy(model, self.family, resolved):
            for part in chunks(self.rows, 32):
                batch = {k: torch.from_numpy(v) for k, v in encode_rows(self.preprocessor, part, names, self.config.sequence_length).items()}
                pred = model(**batch).logits.argmax(-1)
                out += [str(int(p == r["label"])) for p, r in zip(pred.tolist(), part)]
        return "".join(out)
