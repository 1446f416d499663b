"""search: joint multi-objective search of sub-network architecture and per-layer precision policy.

Consumes: ``SuperNet`` and ``Dataset`` (validation split). Produces: ``SearchResult`` — ``evaluations.sqlite``
(every measured candidate), the Pareto front (``pareto.csv`` / ``pareto.json``), ``history.json`` (hypervolume
and predictor quality per iteration), ``estimate_vs_target.json`` and plots (PNG and HTML).

A candidate is measured for real by the same passes a recipe would run — extract, lower, quantize with its
policy, evaluate on the validation split on the target runtime — plus its latency on the target (batch 1) and
the cheap estimate (unless ``estimate: false``): the extracted weights in PyTorch with the policy simulated by fake
quantization. The recipe picks which accuracy drives the search; both are recorded so their rank agreement is reported.
The unpruned model in FP32 and fully INT8 is measured first, in the same run, as the baselines. Latency is
timed interleaved with the unpruned FP32 model kept loaded, and the search optimises that paired ratio.
Before the search, a per-layer latency table (``latency_table.json``: every attention and FFN block shape x
precision pair, lowered, quantized and timed on the target; ``pipeline/search/latency_table.py``) is timed once and
kept in the step's folder; its estimate of each candidate is the latency predictor's extra input, or the predictor
itself where that cross-validates better, and history.json records its error beside the predictor's.
Each batch of new candidates is handed to the context's executor (``search_tasks``: in-process, or Ray tasks,
latency only on nodes advertising the target); this pass alone writes the store, in candidate order, so the
store is the same whichever executor measured it.
A killed search resumes from the store: the search replays deterministically, answering stored candidates.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import shutil
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field, model_validator

from tailorfit.pipeline.cache import write_json_atomic
from tailorfit.pipeline.contract import Pass, PassConfig, PassContext, PortFacts, ProgressTask
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.search.store import EvaluationStore
from tailorfit.pipeline.search.genome import Candidate, Genome
from tailorfit.pipeline.search.latency_table import BlockShapes, LatencyTable, build_table, table_specs
from tailorfit.pipeline.models.loading import family_of
from tailorfit.pipeline.host import lacks_native
from tailorfit.pipeline.models.handles import Dataset, Lowered, SearchResult, SuperNet
from tailorfit.pipeline.models.policy import QuantizationPolicy
from tailorfit.pipeline.search.multiobjective import IntegerProblem, SearchSettings, run_search
from tailorfit.pipeline.search.report import objective_matrix, write_report
from tailorfit.targets import TARGETS

from .extract import Extract, ExtractConfig
from .lower import Lower, LowerConfig
from .search_tasks import BuiltCandidate, TaskSettings, Timed, build_and_score, time_latency, time_latency_table


class SearchConfig(PassConfig, SearchSettings):
    target: str = Field(default="openvino-cpu", description=f"where candidates are lowered and measured: {', '.join(TARGETS)}")
    objectives: list[Literal["accuracy", "latency", "size", "params", "macs", "non_embedding_params"]] = Field(
        default=["accuracy", "latency"], min_length=2, description="accuracy is maximised, the rest minimised")
    accuracy_from: Literal["target", "supernet"] = Field(
        default="target", description="target: the quantized model on the target runtime; supernet: inherited weights in PyTorch, policy fake-quantized")
    estimate: bool = Field(
        default=True, description="also score each candidate in PyTorch with the policy fake-quantized (about as long as evaluating it on the target): "
        "the accuracy when accuracy_from is supernet, otherwise a check of how far that cheap estimate could be trusted (estimate_vs_target.json)")
    precisions: list[Literal["fp32", "int8"]] = Field(default=["fp32", "int8"], min_length=1, description="precision genes per layer and linear group")
    max_accuracy_drop: float | None = Field(default=None, ge=0, description="constraint: validation accuracy points below the unpruned FP32 model")
    max_latency_ms: float | None = Field(default=None, gt=0, description="constraint: median latency at sequence_length")
    max_size_mb: float | None = Field(default=None, gt=0, description="constraint: model files on disk")
    sequence_length: int = Field(default=128, ge=1, description="tokens per input when timing (batch 1)")
    latency_runs: int = Field(default=50, ge=10, description="timed rounds per candidate, each interleaved with the unpruned FP32 model")
    calibration_samples: int = Field(default=64, ge=1, description="quantization calibration rows per candidate")
    near_largest: float = Field(default=0.5, ge=0, le=1, description="share of random candidates drawn near the unpruned architecture (the rest: uniform depth)")
    latency_table: bool = Field(default=True, description="time a per-layer latency table on the target once per search (latency_table.json) and give its estimate to the latency predictor")
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
        if self.accuracy_from == "supernet" and not self.estimate:
            raise ValueError("accuracy_from: supernet needs estimate: true (the estimate is then the accuracy)")
        if "fp32" not in self.precisions:
            raise ValueError("precisions must include fp32: the unpruned FP32 model is every search's reference")
        return self


class Search(Pass):
    name = "search"
    version = 5  # 3: latency as a ratio to the unpruned FP32 model timed interleaved with each candidate; 4: the latency table; 5: the estimate is optional
    Config = SearchConfig
    packages = ("torch", "transformers", "pymoo", "scikit-learn")  # and the target's (packages_for)
    keyed_context = ("seed", "threads")  # it times candidates

    def fingerprint(self) -> str:
        # an explicit store is read: what it holds changes the result
        return str(self.config.store.stat().st_mtime_ns) if self.config.store and self.config.store.exists() else ""

    def packages_for(self, inputs: dict[str, Any]) -> tuple[str, ...]:
        return (*self.packages, *TARGETS[self.config.target].packages)

    def caveats(self, host: Mapping[str, Any]) -> list[str]:
        missing = lacks_native("int8", dict(host)) if "int8" in self.config.precisions else None
        return [missing] if missing else []

    def requires(self, inputs: PortFacts) -> None:
        _refuse_causal_lm(inputs["supernet"].get("task"))
        store = self.config.store
        if store is not None:
            if not store.parent.is_dir():
                raise TailorfitError(f"the search store's folder {store.parent} does not exist", "create it, or point 'store' at a file in an existing folder")
            if store.is_dir() or store.exists() and _header(store) != b"SQLite format 3\x00":
                raise TailorfitError(f"the search store {store} is not an SQLite file", "point 'store' at an evaluations.sqlite a search wrote, or at a new file name")

    def run(self, ctx: PassContext, supernet: SuperNet, data: Dataset) -> SearchResult:
        c = self.config
        if data.task != supernet.source.task:
            raise TailorfitError(f"the dataset is for {data.task} but the super-network is a {supernet.source.task} model", "use a dataset of the model's task")
        _refuse_causal_lm(supernet.source.task)
        genome = Genome(supernet.space, tuple(c.precisions))
        store_path = c.store or ctx.work_dir / "evaluations.sqlite"
        # what a stored measurement depends on: a store from another super-network must not answer this search
        measured = {"supernet": supernet.key, "data": data.key, "target": c.target, "sequence_length": c.sequence_length,
                    "calibration_samples": c.calibration_samples, "threads": ctx.threads, "estimate": c.estimate}
        store = EvaluationStore(store_path, genome.fingerprint(), measured)
        evaluator = CandidateEvaluator(ctx, supernet, data, c)
        try:
            baselines = self._baselines(genome, store, evaluator, ctx)
            estimates = self._latency_estimates(genome, evaluator, store) if c.latency_table else {}
            problem = IntegerProblem(*genome.bounds(), n_obj=len(c.objectives), n_constr=len(_constraints(c)), canonical=genome.canonical,
                                     sample=lambda rng, k: genome.sample(rng, k, c.near_largest), estimates=estimates)
            settings = SearchSettings(**c.model_dump(include=set(SearchSettings.model_fields)) | {"seed": ctx.seed if c.seed is None else c.seed})
            with ctx.progress(f"measuring candidates on {c.target}", c.budget) as bar:
                def measure(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                    return objective_matrix(evaluator.measured(genome, store, list(X), "search", bar), c, baselines["fp32"])

                history = run_search(problem, measure, settings, on_iteration=lambda h: write_report(ctx.work_dir, h, store, c, baselines, final=False))
            report = write_report(ctx.work_dir, history, store, c, baselines, final=True, estimates=estimates)
        finally:
            store.close()
        shutil.rmtree(ctx.work_dir / "built", ignore_errors=True)  # builds awaiting latency: none left once the search is done
        if c.store:  # keep this run's copy beside its report: the handle must point into the cache
            with sqlite3.connect(store_path) as src, sqlite3.connect(ctx.work_dir / "evaluations.sqlite") as dst:
                src.backup(dst)
        if not report["front"]:
            ctx.log.warning("no measured candidate meets the constraints (%s): nothing to select", ", ".join(f"{k} {getattr(c, k)}" for k in _constraints(c)))
        ctx.log.info("search measured %d candidates; %d on the Pareto front; hypervolume %.4f", len(history.X), len(report["front"]), report["hypervolume"])
        return SearchResult(path=ctx.work_dir, supernet=supernet, target=c.target, objectives=c.objectives, baselines=baselines, front=report["front"])

    def _baselines(self, genome: Genome, store: EvaluationStore, evaluator: "CandidateEvaluator", ctx: PassContext) -> dict[str, dict[str, Any]]:
        """The unpruned model in FP32 and (when int8 is a gene) fully INT8, measured like every candidate."""
        if "fp32" not in genome.precisions:
            raise TailorfitError("the precision genes lack fp32, so the FP32 baseline cannot be measured", "include fp32 in 'precisions'")
        largest = genome.space.largest()
        precisions = [p for p in ("fp32", "int8") if p in genome.precisions]
        genomes = [genome.encode(largest, QuantizationPolicy(default=p).resolve(genome.space.num_layers)) for p in precisions]
        with ctx.progress(f"measuring the unpruned baselines on {self.config.target}", len(genomes)) as bar:
            return dict(zip(precisions, evaluator.measured(genome, store, genomes, "baseline", bar)))

    def _latency_estimates(self, genome: Genome, evaluator: "CandidateEvaluator", store: EvaluationStore) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        """The latency table's estimate of each column that is a latency: the ratio objective, the max_latency_ms constraint."""
        c = self.config
        columns = {f"f{c.objectives.index('latency')}": "ratio"} if "latency" in c.objectives else {}
        if c.max_latency_ms is not None:
            columns[f"g{_constraints(c).index('max_latency_ms')}"] = "ms"
        if not columns:
            return {}
        table = evaluator.latency_table(genome, store)
        full = table.full_ms(genome.space)

        @functools.lru_cache(maxsize=None)  # the inner loop asks for the same genomes generation after generation
        def estimate_ms(g: tuple[int, ...]) -> float:
            return table.estimate_ms(genome.decode(np.array(g)))

        def column(kind: str) -> Callable[[np.ndarray], np.ndarray]:
            value = (lambda ms: ms / full) if kind == "ratio" else (lambda ms: ms - c.max_latency_ms)
            return lambda X: np.array([value(estimate_ms(tuple(int(v) for v in row))) for row in X])

        return {name: column(kind) for name, kind in columns.items()}


def _refuse_causal_lm(task: str | None) -> None:
    if task == "causal-lm":
        raise TailorfitError("search measures classification accuracy; this model is a causal LM", "search classifiers for now (decoder search with weight-only precisions is planned)")


def _constraints(c: SearchConfig) -> list[str]:
    return [k for k in ("max_accuracy_drop", "max_latency_ms", "max_size_mb") if getattr(c, k) is not None]


class CandidateEvaluator:
    """Measures batches of candidates through the context's executor and records them, in candidate order, in the store.

    Building and scoring (``search_tasks.build_and_score``) may run anywhere; timing (``time_latency``) asks for the
    target as a resource, so on Ray it runs only on nodes advertising it, one at a time per node. The super-network,
    the dataset and the unpruned FP32 reference are shipped once per search, not per candidate.
    """

    def __init__(self, ctx: PassContext, supernet: SuperNet, data: Dataset, config: SearchConfig):
        self.ctx, self.config, self.supernet, self.data = ctx, config, supernet, data
        self.settings = TaskSettings(target=config.target, sequence_length=config.sequence_length, calibration_samples=config.calibration_samples,
                                     latency_runs=config.latency_runs, seed=ctx.seed, threads=ctx.threads, estimate=config.estimate)

    # shipped on first need: a search answered wholly from its store ships nothing and builds no reference
    @functools.cached_property
    def build_args(self) -> dict[str, Any]:
        share = self.ctx.executor.share
        # builds running side by side split the CPUs; timing (latency_args) keeps them all
        threads = max(1, self.ctx.threads // self.ctx.executor.parallel)
        return {"supernet": self.supernet, "supernet_folder": share(self.supernet.path), "data": self.data, "data_folder": share(self.data.path),
                "settings": dataclasses.replace(self.settings, threads=threads)}

    @functools.cached_property
    def latency_args(self) -> dict[str, Any]:
        folder = self._reference()
        reference = Lowered.model_validate_json((folder / "lowered.json").read_text()).relocate(self.ctx.work_dir / "reference.partial", folder)
        return {"reference": reference, "reference_folder": self.ctx.executor.share(folder), "settings": self.settings}

    def latency_table(self, genome: Genome, store: EvaluationStore) -> LatencyTable:
        """Timed once on the target (``search_tasks.time_latency_table``), kept in the step's folder and attached to the
        store: a resumed search, and every search sharing the store (a bench's algorithms), reads it back."""
        c, path = self.config, self.ctx.work_dir / "latency_table.json"
        if path.is_file():  # the step's folder is keyed by everything the timings depend on
            return LatencyTable.model_validate_json(path.read_text())
        if (stored := store.attachment("latency_table")) is not None:  # the store's own record covers what the table depends on
            table = LatencyTable.model_validate(stored)
            write_json_atomic(path, stored)
            self.ctx.log.info("latency table: %d blocks read from the store %s (timed by an earlier search)", len(table.entries), store.path)
            return table
        measured = {"supernet": str(self.supernet.key), "target": c.target, "sequence_length": c.sequence_length, "threads": self.ctx.threads}
        space, family = genome.space, family_of(self.supernet.source)
        shapes = BlockShapes(hidden=space.hidden_size, head_dim=space.head_dim, group_size=space.group_size, qkv_linears=len(family.groups["qkv"]),
                             up_linears=len(family.groups["ffn_up"]), sequence_length=c.sequence_length)
        specs = table_specs(space, genome.precisions)
        with self.ctx.progress(f"timing the latency table on {c.target} ({len(specs)} blocks)", None):
            [timed] = self.ctx.executor.map(time_latency_table, [specs], {"shapes": shapes, **self.latency_args}, resources={c.target: 1})
        table = build_table(specs, timed, space, shapes, measured)
        if off := [e for e in table.entries if e.runtime_precisions != e.precisions]:
            self.ctx.log.warning("latency table: the runtime does not run %d blocks in the precisions asked, e.g. %s %d: %s for %s",
                                 len(off), off[0].block, off[0].width, off[0].runtime_precisions, off[0].precisions)
        write_json_atomic(path, table.model_dump(mode="json"))
        store.attach("latency_table", table.model_dump(mode="json"))
        self.ctx.log.info("latency table: %d blocks timed in %.0f s; unpruned FP32 %.2f ms, of which %.2f ms outside the layers",
                          len(specs), table.seconds, table.reference_ms, table.fixed_ms)
        return table

    def _reference(self) -> Path:
        """The unpruned FP32 model on the target, built once per search: every candidate is timed interleaved with it."""
        folder = self.ctx.work_dir / "reference"
        if not (folder / "lowered.json").is_file():
            tmp = self.ctx.work_dir / "reference.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            dense = Extract(ExtractConfig(subnet="largest", name="reference")).run(self._stage(tmp, "extract"), supernet=self.supernet)
            lowered = Lower(LowerConfig(target=self.config.target)).run(self._stage(tmp, "lower"), model=dense)
            (tmp / "lowered.json").write_text(lowered.model_dump_json())
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        return folder

    def _stage(self, root: Path, stage: str) -> PassContext:
        work = root / stage
        work.mkdir(parents=True)
        return self.ctx.child(f"{self.ctx.step_id}:reference", work)

    def measured(self, genome: Genome, store: EvaluationStore, genomes: list[np.ndarray], role: str, bar: ProgressTask) -> list[dict[str, Any]]:
        """The stored records of these genomes' candidates, measuring the new ones first (in parallel where the executor allows).

        Nothing measured is lost to a kill: each build is kept in the step's folder as soon as it finishes (a resumed
        search times it without building it again), and each candidate enters the store as soon as it and every
        candidate before it in the batch are timed, so the store keeps candidate order."""
        candidates = [genome.decode(g) for g in genomes]
        new: dict[str, tuple[Candidate, np.ndarray]] = {}
        for candidate, g in zip(candidates, genomes):
            if store.get(candidate.id) is None:
                new.setdefault(candidate.id, (candidate, genome.canonical(g)))
        if not new:
            return [store.get(candidate.id) for candidate in candidates]
        kept = _KeptBuilds(self.ctx.work_dir / "built")
        todo = [candidate for candidate, _ in new.values() if not kept.has(candidate.id)]
        bar.advance(0.5 * (len(new) - len(todo)))
        self.ctx.executor.map(build_and_score, todo, self.build_args, on_result=lambda i, b: (kept.add(b), bar.advance(0.5)))
        order, timed, stored = list(new.values()), {}, []

        def store_ready(i: int, t: Timed) -> None:
            timed[i] = t
            bar.advance(0.5)
            while len(stored) < len(order) and len(stored) in timed:
                (candidate, canonical), t = order[len(stored)], timed[len(stored)]
                b = kept.get(candidate.id)
                metrics = {**b.metrics, **t.metrics, "seconds_by_stage": {**b.metrics["seconds_by_stage"], "latency": round(t.seconds, 3)}}
                store.add(candidate, canonical.tolist(), metrics, b.seconds + t.seconds, role)
                kept.remove(candidate.id)
                stored.append(candidate.id)

        self.ctx.executor.map(time_latency, [kept.get(c.id) for c, _ in order], self.latency_args, resources={self.config.target: 1}, on_result=store_ready)
        return [store.get(candidate.id) for candidate in candidates]


def _header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


class _KeptBuilds:
    """Built candidates waiting for their latency, one pickle each in the step's folder (kept across a kill)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(exist_ok=True)

    def _path(self, candidate: str) -> Path:
        return self.folder / f"{candidate}.pkl"

    def has(self, candidate: str) -> bool:
        return self._path(candidate).is_file()

    def add(self, built: BuiltCandidate) -> None:
        tmp = self.folder / f".{built.candidate}.tmp"
        tmp.write_bytes(pickle.dumps(built))
        os.replace(tmp, self._path(built.candidate))

    def get(self, candidate: str) -> BuiltCandidate:
        return pickle.loads(self._path(candidate).read_bytes())

    def remove(self, candidate: str) -> None:
        self._path(candidate).unlink()
