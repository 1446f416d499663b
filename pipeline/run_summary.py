"""The one-JSON summary of a finished run that ``tailorfit run --json`` prints for a pipeline step, and its exit code."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tailorfit.pipeline.inspect_run import read_run

DONE, NOTHING_MET = 0, 3  # exit codes; 2 is bad input, 1 an internal error (pipeline/cli.py)
_SELECTING = ("select", "choose")  # the passes that pick candidates by a rule, and skip when none meets it
_QUALITY = ("accuracy", "accuracy_ci95", "pearson", "pearson_ci95", "spearman", "perplexity", "perplexity_ci95", "examples", "split")


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Run folder, every step's state, each packaged candidate's headline metrics and ``versus`` ratios, and the exit
    code: ``NOTHING_MET`` when the recipe picks candidates by a rule and nothing it picked reached the end (no packaged
    candidate came from a search; without a package step, every pick was skipped)."""
    manifest, metrics = read_run(run_dir)
    steps = {sid: _step(record) for sid, record in manifest["steps"].items()}
    picks = [sid for sid, record in manifest["steps"].items() if record["pass"] in _SELECTING]
    packaged_from_search = any(entry.get("selection") for entry in metrics.values())
    packaging = any(record["pass"] == "package" for record in manifest["steps"].values())
    met = not picks or (packaged_from_search if packaging else any(steps[sid]["state"] != "skipped" for sid in picks))
    return {
        "run_dir": str(Path(run_dir).resolve()), "status": "done" if met else "no candidate met the constraints", "exit_code": DONE if met else NOTHING_MET,
        "seconds": manifest.get("seconds"), "steps": steps,
        "candidates": {name: _candidate(entry) for name, entry in metrics.items()},
    }


def _step(record: dict[str, Any]) -> dict[str, Any]:
    if "skipped" in record:
        return {"pass": record["pass"], "state": "skipped", "reason": record["skipped"]}
    return {"pass": record["pass"], "state": "cached" if record.get("cache_hit") else "ran", "seconds": record.get("seconds")}


def _candidate(entry: dict[str, Any]) -> dict[str, Any]:
    targets = {}
    for target, m in entry["targets"].items():
        targets[target] = {
            **{k: m[k] for k in _QUALITY if k in m}, "precision": m["precision"], "size_mb": m["size_mb"],
            "latency_ms": {length: lat["median_ms"] for length, lat in m.get("latency", {}).items()},
            "versus": m.get("versus", {}),
        }
    return {"from_search": bool(entry.get("selection")), "targets": targets}
