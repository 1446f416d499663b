"""Executes a validated pipeline: cache look-ups, pass runs, the run manifest."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .cache import Cache, package_versions, step_key, write_json_atomic
from .console import ProgressDisplay, setup_logging
from .contract import PassContext
from .errors import StepSkipped, TailorfitError
from .executor import executor_from
from .graph import Pipeline
from .handles import Handle, Lowered
from .host import PeakMemory, default_threads, host_info
from .recipe import load_recipe

COST = "cost.json"  # in a cache entry: seconds and peak memory of the run that produced it
CORE_PACKAGES = ("tailorfit", "torch", "transformers", "openvino", "nncf", "onnx", "onnxruntime", "onnxscript", "optimum-intel", "networkx", "pydantic")


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict[str, Any]
    outputs: dict[str, Handle]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def collect_metrics(outputs: Iterable[Handle]) -> dict[str, dict[str, Any]]:
    """``{candidate: {target: metrics}}`` from the final handle of every lowered branch."""
    table: dict[str, dict[str, Any]] = {}
    for h in outputs:
        if isinstance(h, Lowered) and h.metrics:
            table.setdefault(h.candidate, {})[h.target] = {"precision": h.precision, "inference_precision": h.inference_precision, **h.metrics}
    return table


def run_pipeline(
    recipe: str | Path | dict[str, Any] | None = None,
    out: str | Path = "artifacts",
    cache_dir: str | Path | None = None,
    force: Iterable[str] = (),
    quiet: bool = False,
    debug: bool = False,
    executor: str | None = None,
) -> RunResult:
    """Run a recipe (a path, a dict, or None for the embedded default) and return its outputs.

    ``executor`` (``local``, ``ray``, ``ray://HOST:PORT``) overrides the recipe's; see ``pipeline/executor.py``."""
    log = setup_logging(quiet, debug)
    parsed, raw = load_recipe(recipe)
    pipe = Pipeline(parsed)
    out = Path(out).resolve()
    run_dir = out / parsed.name
    cache = Cache(Path(cache_dir or os.environ.get("TAILORFIT_CACHE") or out / ".cache"))
    forced = pipe.downstream(set().union(*(pipe.steps_matching(f) for f in force))) if force else set()
    threads = parsed.threads or default_threads()
    pool = executor_from(executor or parsed.executor)  # a bad spec or an unreachable address fails here, before anything is written
    _set_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)

    packages = sorted({pkg for n in pipe.nodes.values() for pkg in n.pass_.packages} | set(CORE_PACKAGES))
    manifest: dict[str, Any] = {
        "recipe_name": parsed.name, "status": "running", "started": _now(), "recipe": raw,
        "seed": parsed.seed, "threads": threads, "host": host_info(), "packages": package_versions(tuple(packages)),
        "cache": str(cache.root), "order": pipe.order, "steps": {}, "inputs": {},
    }
    manifest_path = run_dir / "manifest.json"
    outputs: dict[str, Handle] = {}
    t_run = time.perf_counter()
    with ProgressDisplay(enabled=not quiet) as display, contextlib.closing(pool):
        manifest["executor"] = pool.spec  # what the spec resolved to: $RAY_ADDRESS, or a local instance
        for sid in pipe.order:
            node = pipe.nodes[sid]
            p = node.pass_
            inputs = _available_inputs(node.wiring, node.many, outputs)
            if isinstance(inputs, str):
                manifest["steps"][sid] = {"pass": p.name, "inputs": node.wiring, "skipped": inputs}
                log.info("%s: skipped (%s)", sid, inputs)
                continue
            fingerprint = p.fingerprint()  # hashes whole model folders: once per step
            key = step_key(p, inputs, fingerprint)
            record: dict[str, Any] = {"pass": p.name, "config": p.config.model_dump(mode="json"), "inputs": node.wiring, "key": key}
            if fingerprint:
                manifest["inputs"][sid] = fingerprint
            with contextlib.ExitStack() as held:
                handle = cache.lookup(p.name, key) if p.cached and sid not in forced else None
                if handle is None and p.cached:
                    held.enter_context(cache.claim(p.name, key))
                    if sid not in forced:  # another run sharing the cache may have made it while this one waited
                        handle = cache.lookup(p.name, key)
                record["cache_hit"] = handle is not None
                t0 = time.perf_counter()
                if handle is None:
                    log.info("%s: running %s", sid, p.name)
                    work = cache.work_dir(p.name, key)
                    ctx = PassContext(
                        step_id=sid, work_dir=work, run_dir=run_dir, seed=parsed.seed, threads=threads,
                        log=logging.getLogger(f"tailorfit.{sid}"), progress_factory=display.task, executor=pool,
                        extras={"manifest": manifest, "manifest_path": manifest_path},
                    )
                    try:
                        # libraries print progress to stdout; keep stdout for results (the CLI prints the run directory there)
                        with contextlib.redirect_stdout(sys.stderr), PeakMemory() as memory:
                            handle = p.run(ctx, **inputs)
                    except StepSkipped as skip:
                        shutil.rmtree(work, ignore_errors=True)
                        manifest["steps"][sid] = {**record, "skipped": str(skip)}
                        write_json_atomic(manifest_path, manifest)
                        log.warning("%s: skipped: %s", sid, skip)
                        continue
                    except BaseException as exc:
                        if isinstance(exc, TailorfitError):  # bad input: nothing worth resuming from
                            shutil.rmtree(work, ignore_errors=True)
                        manifest["status"] = "failed"
                        manifest["error"] = {"step": sid, "message": str(exc) or type(exc).__name__}
                        manifest["steps"][sid] = record
                        write_json_atomic(manifest_path, manifest)
                        raise
                    # what producing the entry cost, kept with it: a later run that finds it cached still reports it
                    write_json_atomic(work / COST, {"seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(memory.peak_mb, 1), "threads": threads})
                    handle = cache.commit(p.name, key, handle, work)
                else:
                    log.info("%s: cached (%s)", sid, key)
                record["seconds"] = round(time.perf_counter() - t0, 3)
                if (cost := cache.entry(p.name, key) / COST).is_file():
                    record["produced"] = json.loads(cost.read_text())
                outputs[sid] = handle
                manifest["steps"][sid] = record
                write_json_atomic(manifest_path, manifest)
    manifest.update(status="finished", finished=_now(), seconds=round(time.perf_counter() - t_run, 3), metrics=collect_metrics(outputs.values()))
    write_json_atomic(manifest_path, manifest)
    return RunResult(run_dir, manifest, outputs)


def _available_inputs(wiring: dict[str, list[str]], many: set[str], outputs: dict[str, Handle]) -> dict[str, Any] | str:
    """The step's inputs, or why it is skipped: a single input from a skipped step, or a list input with no branch left."""
    inputs: dict[str, Any] = {}
    for port, ups in wiring.items():
        present = [outputs[u] for u in ups if u in outputs]
        if port in many and (present or not ups):  # an optional list port may have nothing wired
            inputs[port] = present
        elif port not in many and present:
            inputs[port] = present[0]
        else:
            return f"its input '{port}' comes from skipped step(s) {', '.join(u for u in ups if u not in outputs)}"
    return inputs


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
