"""package: the deployable artifact directory.

Consumes: every final ``Lowered`` branch of the run, and every ``SearchResult`` (its store, front, history and
plots). Produces: ``Artifact`` — ``<run>/candidates/<id>/`` with one folder per target (OpenVINO IR, ONNX), the
tokenizer and config, ``metrics.json`` (everything measured, plus paired comparisons against the unpruned FP32 and
fully-INT8 models on the same target: accuracy on the same examples, latency timed interleaved here) and a
``README.md`` model card; ``<run>/search/<step>/`` with each search's reports; ``<run>/metrics.json``.

The candidates are built (and their latency ratios timed) in the cache entry, so a re-run of an unchanged recipe
re-times nothing; ``publish`` then links them into the run folder, whose model cards and step names it writes from
this run's manifest, swapping each folder in whole.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from tailorfit.pipeline.cache import swap_in_folder
from tailorfit.pipeline.contract import Pass, PassConfig, PassContext
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.host import host_info
from tailorfit.pipeline.models.handles import Artifact, Lowered, SearchResult
from tailorfit.pipeline.models.loading import load_preprocessor
from tailorfit.pipeline.models.model_card import model_card
from tailorfit.pipeline.search.stats import paired_change, paired_pearson_change
from tailorfit.targets import get_target
from tailorfit.targets.timing import measure_interleaved

from .benchmark import synthetic_inputs

ENTRIES = "entries.json"  # in the cache entry: every candidate's metrics, keyed on the branches' cache keys


class PackageConfig(PassConfig):
    link: bool = True  # hard-link runtime files from the cache instead of copying them (same bytes, no extra disk)
    latency_rounds: int = Field(default=100, ge=0, description="rounds timing each candidate interleaved with its FP32 / INT8 baselines (0: no ratios)")


class Package(Pass):
    name = "package"
    version = 2  # 2: built in the cache entry, published into the run folder
    keyed_context = ("seed", "threads")  # it times latency ratios
    Config = PackageConfig

    def run(self, ctx: PassContext, models: list[Lowered], searches: list[SearchResult] = ()) -> Artifact:
        groups: dict[str, dict[str, Lowered]] = {}
        for m in models:
            if m.target in groups.setdefault(m.candidate, {}):
                raise TailorfitError(f"two branches produce candidate '{m.candidate}' for {m.target}", "give the branches different policies or precisions")
            groups[m.candidate][m.target] = m
        when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        entries, timer = {}, _PairedTimer(self.config.latency_rounds, ctx.threads, ctx.seed)
        for cand, by_target in sorted(groups.items()):
            folder = ctx.work_dir / "candidates" / cand
            folder.mkdir(parents=True)
            source = next(iter(by_target.values())).source
            load_preprocessor(source).save_pretrained(folder)
            shutil.copy2(source.path / "config.json", folder / "config.json")
            entry: dict[str, Any] = {"candidate": cand, "model": source.name, "task": source.task, "family": source.family, "notes": source.notes, "measured": when, "host": host_info(), "targets": {}}
            if source.selection is not None:  # the search-time (validation) measurements, beside the final ones below
                entry["selection"] = source.selection.model_dump(mode="json")
            if source.distillation is not None:
                entry["distillation"] = source.distillation
            for target_name, m in sorted(by_target.items()):
                target = get_target(target_name)
                dest = folder / target.folder
                dest.mkdir()
                for f in m.files:
                    _place(f, dest / f.name, link=True)
                entry["targets"][target_name] = {
                    "branch_key": m.key, "runtime": target.runtime, "files": [f"{target.folder}/{f.name}" for f in m.files],
                    "size_mb": round(m.size_bytes() / 2**20, 3),
                    "precision": m.precision, "inference_precision": m.inference_precision, "policy": m.policy, **m.metrics,
                    **_versus_baselines(m, groups, timer),
                }
            entries[cand] = entry
        for search in searches:
            dest = ctx.work_dir / "search" / search.key
            dest.mkdir(parents=True)
            for f in sorted(search.path.iterdir()):
                if f.is_file() and f.name != "handle.json":
                    _place(f, dest / f.name, link=True)
        (ctx.work_dir / ENTRIES).write_text(json.dumps(entries, indent=2, default=str))
        return Artifact(path=ctx.work_dir, candidates=sorted(entries))

    def publish(self, ctx: PassContext, handle: Artifact) -> Artifact:
        """Link the built candidates into the run folder, naming steps and writing model cards from this run's manifest."""
        built, run_dir = handle.path, ctx.run_dir
        steps_by_key = {s["key"]: sid for sid, s in ctx.manifest.get("steps", {}).items() if "key" in s}
        entries = json.loads((built / ENTRIES).read_text())
        tmp = run_dir / ".candidates.partial"
        _link_tree(built / "candidates", tmp, self.config.link)
        for cand, entry in entries.items():
            for metrics in entry["targets"].values():
                metrics["step"] = steps_by_key.get(metrics.pop("branch_key"), "")
            (tmp / cand / "metrics.json").write_text(json.dumps(entry, indent=2, default=str))
            (tmp / cand / "README.md").write_text(model_card(entry, ctx.manifest))
        final = swap_in_folder(tmp, run_dir / "candidates")
        if (built / "search").is_dir():
            reports = run_dir / ".search.partial"
            shutil.rmtree(reports, ignore_errors=True)
            for search in sorted((built / "search").iterdir()):
                _link_tree(search, reports / steps_by_key.get(search.name, search.name), self.config.link)
            swap_in_folder(reports, run_dir / "search")
        (run_dir / "metrics.json").write_text(json.dumps(entries, indent=2, default=str))
        ctx.log.info("packaged %d candidates in %s", len(entries), final)
        return handle.model_copy(update={"path": run_dir})


def _link_tree(src: Path, dst: Path, link: bool) -> None:
    """``dst`` made anew as a copy of ``src`` whose files are hard links (or copies) of ``src``'s."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, copy_function=lambda a, b: _place(Path(a), Path(b), link))


def _place(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another filesystem: fall back to a copy
    shutil.copy2(src, dst)


def _origin(m: Lowered) -> str:
    """The cache key of the model a lowered branch descends from: a searched sub-network counts as its unpruned model's."""
    return m.source.selection.origin if m.source.selection else m.source.key


def _baseline(m: Lowered, groups: dict[str, dict[str, Lowered]], precision: str) -> Lowered | None:
    """The unpruned model of the same origin on the same target, in f32 (``fp32``) or fully INT8, if the run has one."""
    for by_target in groups.values():
        b = by_target.get(m.target)
        if (b is not None and b is not m and b.source.selection is None and _origin(b) == _origin(m)
                and b.precision == precision and b.inference_precision == "f32"):
            return b
    return None


def _versus_baselines(m: Lowered, groups: dict[str, dict[str, Lowered]], timer: "_PairedTimer") -> dict[str, Any]:
    """Size ratios, paired accuracy (or Pearson) changes and interleaved latency ratios against the FP32 and fully-INT8 unpruned models."""
    bases = {p: b for p in ("fp32", "int8") if (b := _baseline(m, groups, p)) is not None}
    ratios = timer.ratios(m, list(bases.values()))
    out: dict[str, Any] = {}
    for precision, base in bases.items():
        versus: dict[str, Any] = {"candidate": base.candidate, "size_ratio": round(m.size_bytes() / base.size_bytes(), 4)}
        if ratios.get(base.candidate):
            versus["latency_ratio"] = ratios[base.candidate]
        if "predictions" in m.reports and "predictions" in base.reports and "accuracy" in m.metrics:
            versus["accuracy_change"] = paired_change(m.reports["predictions"], base.reports["predictions"])
        elif "predictions" in m.reports and "predictions" in base.reports and "pearson" in m.metrics:
            versus["pearson_change"] = paired_pearson_change(m.reports["predictions"], base.reports["predictions"])
        out[precision] = versus
    return {"versus": out} if out else {}


class _PairedTimer:
    """Latency ratios measured at packaging, each candidate interleaved with its baselines in one process: ratios of
    medians from separate benchmark steps drifted by up to 2x on the shared CI machine (README), these do not."""

    def __init__(self, rounds: int, threads: int, seed: int):
        self.rounds, self.threads, self.seed = rounds, threads, seed
        self._sessions: dict[str, Any] = {}

    def _session(self, m: Lowered):
        if m.key not in self._sessions:
            self._sessions[m.key] = get_target(m.target).session(m.files, self.threads, m.inference_precision)
        return self._sessions[m.key]

    def ratios(self, m: Lowered, bases: list[Lowered]) -> dict[str, dict[str, float]]:
        """``{baseline candidate: {sequence length: median per-round ratio}}`` at the lengths ``m`` was benchmarked at."""
        lengths = [k for k in m.metrics.get("latency", {}) if k != "image"]
        if not self.rounds or not bases or not lengths:
            return {}
        out: dict[str, dict[str, float]] = {b.candidate: {} for b in bases}
        rng = np.random.default_rng(self.seed)
        for length in lengths:
            runs = {}
            for model in [m, *bases]:
                run, inputs = self._session(model), synthetic_inputs(model, int(length), rng)
                runs[model.candidate] = lambda run=run, inputs=inputs: run(inputs)
            timed = measure_interleaved(runs, warmup=5, rounds=self.rounds)
            for b in bases:
                out[b.candidate][length] = round(timed.ratio(m.candidate, b.candidate), 4)
        return out

