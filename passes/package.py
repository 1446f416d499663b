"""package: the deployable artifact directory.

Consumes: every final ``Lowered`` branch of the run, and every ``SearchResult`` (its store, front, history and
plots are copied to ``<run>/search/<step>/``). Produces: ``Artifact`` — ``<run>/candidates/<id>/``
with one folder per target (OpenVINO IR, ONNX), the tokenizer and config, ``metrics.json`` (everything
measured, plus paired comparisons against the unpruned FP32 and fully-INT8 models on the same target: accuracy on
the same examples, latency timed interleaved here) and a ``README.md``
model card. The run's ``manifest.json`` sits beside it. Built in a temp folder and swapped in whole.
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
from tailorfit.pipeline.models.handles import Artifact, Lowered, SearchResult
from tailorfit.pipeline.host import host_info
from tailorfit.pipeline.models.model_card import model_card
from tailorfit.pipeline.models.loading import load_preprocessor
from tailorfit.pipeline.search.stats import paired_difference
from tailorfit.targets import get_target
from tailorfit.targets.timing import measure_interleaved

from .benchmark import synthetic_inputs


class PackageConfig(PassConfig):
    link: bool = True  # hard-link runtime files from the cache instead of copying them (same bytes, no extra disk)
    latency_rounds: int = Field(default=100, ge=0, description="rounds timing each candidate interleaved with its FP32 / INT8 baselines (0: no ratios)")


class Package(Pass):
    name = "package"
    Config = PackageConfig
    cached = False  # it writes into the run directory, which is not content-addressed

    def run(self, ctx: PassContext, models: list[Lowered], searches: list[SearchResult] = ()) -> Artifact:
        groups: dict[str, dict[str, Lowered]] = {}
        for m in models:
            if m.target in groups.setdefault(m.candidate, {}):
                raise TailorfitError(f"two branches produce candidate '{m.candidate}' for {m.target}", "give the branches different policies or precisions")
            groups[m.candidate][m.target] = m
        tmp = ctx.run_dir / ".candidates.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        manifest = ctx.extras.get("manifest", {})
        steps_by_key = {s["key"]: sid for sid, s in manifest.get("steps", {}).items() if "key" in s}
        summary = {}
        timer = _PairedTimer(self.config.latency_rounds, ctx.threads, ctx.seed)
        for cand, by_target in sorted(groups.items()):
            folder = tmp / cand
            folder.mkdir()
            source = next(iter(by_target.values())).source
            load_preprocessor(source).save_pretrained(folder)
            shutil.copy2(source.path / "config.json", folder / "config.json")
            entry: dict[str, Any] = {"candidate": cand, "model": source.name, "task": source.task, "family": source.family, "notes": source.notes, "measured": when, "host": host_info(), "targets": {}}
            if source.selection is not None:  # the search-time (validation) measurements, beside the final ones below
                entry["selection"] = source.selection.model_dump(mode="json")
            for target_name, m in sorted(by_target.items()):
                target = get_target(target_name)
                dest = folder / target.folder
                dest.mkdir()
                for f in m.files:
                    _place(f, dest / f.name, self.config.link)
                metrics = {
                    "step": steps_by_key.get(m.key, ""), "runtime": target.runtime, "files": [f"{target.folder}/{f.name}" for f in m.files],
                    "size_mb": round(m.size_bytes() / 2**20, 3),
                    "precision": m.precision, "inference_precision": m.inference_precision, "policy": m.policy, **m.metrics,
                    **_versus_baselines(m, groups, timer),
                }
                entry["targets"][target_name] = metrics
            (folder / "metrics.json").write_text(json.dumps(entry, indent=2, default=str))
            (folder / "README.md").write_text(model_card(entry, manifest))
            summary[cand] = entry
        final = swap_in_folder(tmp, ctx.run_dir / "candidates")
        if searches:
            reports = ctx.run_dir / ".search.partial"
            shutil.rmtree(reports, ignore_errors=True)
            reports.mkdir()
            for search in searches:
                dest = reports / steps_by_key.get(search.key, search.key)
                dest.mkdir()
                for f in sorted(search.path.iterdir()):
                    if f.is_file() and f.name != "handle.json":
                        _place(f, dest / f.name, self.config.link)
            swap_in_folder(reports, ctx.run_dir / "search")
        (ctx.run_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
        ctx.log.info("packaged %d candidates in %s", len(summary), final)
        return Artifact(path=ctx.run_dir, candidates=sorted(summary))


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
    """Size ratios, paired accuracy changes and interleaved latency ratios against the FP32 and fully-INT8 unpruned models."""
    bases = {p: b for p in ("fp32", "int8") if (b := _baseline(m, groups, p)) is not None}
    ratios = timer.ratios(m, list(bases.values()))
    out: dict[str, Any] = {}
    for precision, base in bases.items():
        versus: dict[str, Any] = {"candidate": base.candidate, "size_ratio": round(m.size_bytes() / base.size_bytes(), 4)}
        if ratios.get(base.candidate):
            versus["latency_ratio"] = ratios[base.candidate]
        if "predictions" in m.reports and "predictions" in base.reports and "accuracy" in m.metrics:
            mine, theirs = correct_by_id(m.reports["predictions"]), correct_by_id(base.reports["predictions"])
            ids = sorted(set(mine) & set(theirs))
            versus["accuracy_change"] = paired_difference(np.array([mine[i] for i in ids]), np.array([theirs[i] for i in ids]))
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


def correct_by_id(path: Path) -> dict[int, int]:
    """Per test example id, 1 when the model's prediction was right: the rows paired comparisons are made on."""
    with open(path) as f:
        return {r["id"]: r["correct"] for r in map(json.loads, f)}
