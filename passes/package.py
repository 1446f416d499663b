"""package: the deployable artifact directory.

Consumes: every final ``Lowered`` branch of the run. Produces: ``Artifact`` — ``<run>/candidates/<id>/``
with one folder per target (OpenVINO IR, ONNX), the tokenizer and config, ``metrics.json`` (everything
measured, plus paired comparisons against the FP32 baseline on the same target) and a ``README.md``
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

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.handles import Artifact, Lowered
from tailorfit.pipeline.host import host_info
from tailorfit.pipeline.model_card import model_card
from tailorfit.pipeline.models import load_preprocessor
from tailorfit.pipeline.stats import paired_difference
from tailorfit.targets import get_target


class PackageConfig(PassConfig):
    link: bool = True  # hard-link runtime files from the cache instead of copying them (same bytes, no extra disk)


class Package(Pass):
    name = "package"
    Config = PackageConfig
    cached = False  # it writes into the run directory, which is not content-addressed

    def run(self, ctx: PassContext, models: list[Lowered]) -> Artifact:
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
                    "size_mb": round(_size(m) / 2**20, 3),
                    "precision": m.precision, "inference_precision": m.inference_precision, "policy": m.policy, **m.metrics,
                    **_versus_baselines(m, groups),
                }
                entry["targets"][target_name] = metrics
            (folder / "metrics.json").write_text(json.dumps(entry, indent=2, default=str))
            (folder / "README.md").write_text(model_card(entry, manifest))
            summary[cand] = entry
        final = ctx.run_dir / "candidates"
        if final.exists():
            old = ctx.run_dir / ".candidates.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
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


def _versus_baselines(m: Lowered, groups: dict[str, dict[str, Lowered]]) -> dict[str, Any]:
    """Latency and size ratios and the paired accuracy change against the FP32 and fully-INT8 unpruned models."""
    out: dict[str, Any] = {}
    for precision in ("fp32", "int8"):
        base = _baseline(m, groups, precision)
        if base is None:
            continue
        versus: dict[str, Any] = {"candidate": base.candidate, "size_ratio": round(_size(m) / _size(base), 4)}
        if "latency" in m.metrics and "latency" in base.metrics:
            versus["latency_ratio"] = {
                k: round(v["median_ms"] / base.metrics["latency"][k]["median_ms"], 4) for k, v in m.metrics["latency"].items() if k in base.metrics["latency"]
            }
        if "predictions" in m.reports and "predictions" in base.reports and "accuracy" in m.metrics:
            mine, theirs = _correct_by_id(m.reports["predictions"]), _correct_by_id(base.reports["predictions"])
            ids = sorted(set(mine) & set(theirs))
            versus["accuracy_change"] = paired_difference(np.array([mine[i] for i in ids]), np.array([theirs[i] for i in ids]))
        out[precision] = versus
    return {"versus": out} if out else {}


def _size(m: Lowered) -> int:
    return sum(f.stat().st_size for f in m.files)


def _correct_by_id(path: Path) -> dict[int, int]:
    with open(path) as f:
        return {r["id"]: r["correct"] for r in map(json.loads, f)}
