"""Executes a validated pipeline: cache look-ups, pass runs, the run manifest."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tailorfit.pipeline.cache import Cache, package_versions, step_key, write_json_atomic
from tailorfit.pipeline.console import ProgressDisplay, setup_logging
from tailorfit.pipeline.contract import Pass, PassContext
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.executor import Executor, Shipped, executor_from, unpack_folder
from tailorfit.pipeline.graph import Pipeline
from tailorfit.pipeline.handles import Handle
from tailorfit.pipeline.host import default_threads, host_info
from tailorfit.pipeline.recipe import load_recipe
from tailorfit.pipeline.scratch import sweep
from tailorfit.pipeline.run_status import HEARTBEAT, Heartbeat, effective_status, this_process
from tailorfit.pipeline.step_tasks import StepTask, input_folders, run_pass, run_step

COST = "cost.json"  # in a cache entry: seconds and peak memory of the run that produced it
CORE_PACKAGES = ("tailorfit", "networkx", "pydantic")  # the steps add theirs (and their targets') as their keys are made


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict[str, Any]
    outputs: dict[str, Handle]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def collect_metrics(outputs: Iterable[Handle]) -> dict[str, dict[str, Any]]:
    """``{candidate: {target: metrics}}`` from every handle that measured something (``Handle.measured``)."""
    table: dict[str, dict[str, Any]] = {}
    for h in outputs:
        for candidate, by_target in h.measured().items():
            for target, metrics in by_target.items():
                table.setdefault(candidate, {})[target] = metrics
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
    _writable_folder(out, "the output folder (--out)")
    _writable_folder(cache.root, "the cache folder (--cache, $TAILORFIT_CACHE)")
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = run_dir / "manifest.json"
    _report_previous(manifest_path, log)
    if removed := sweep():
        log.info("removed %d temporary folders that killed tailorfit processes left", len(removed))

    manifest: dict[str, Any] = {
        "recipe_name": parsed.name, "status": "running", "started": _now(), "process": this_process(), "heartbeat": HEARTBEAT, "recipe": raw,
        "seed": parsed.seed, "threads": threads, "host": host_info(), "packages": package_versions(CORE_PACKAGES),
        "cache": str(cache.root), "order": pipe.order, "steps": {}, "inputs": {},
    }
    manifest["caveats"] = list(dict.fromkeys(c for sid in pipe.order for c in pipe.nodes[sid].pass_.caveats(manifest["host"])))
    for caveat in manifest["caveats"]:
        log.warning("%s", caveat)
    outputs: dict[str, Handle] = {}
    t_run = time.perf_counter()
    with ProgressDisplay(enabled=not quiet) as display, contextlib.closing(pool), Heartbeat(run_dir):
        manifest["executor"] = pool.spec  # what the spec resolved to: $RAY_ADDRESS, or a local instance
        run = _Run(pipe, cache, forced, manifest, manifest_path, outputs, run_dir, parsed.seed, threads, display, pool, log)
        pending = list(pipe.order)
        while pending:
            if pool.distributed and pipe.nodes[pending[0]].pass_.portable:
                run.run_wave(run.next_wave(pending))
            elif (step := run.prepare(pending.pop(0))) is not None:
                run.run_here(step)
    manifest.update(status="finished", finished=_now(), seconds=round(time.perf_counter() - t_run, 3), metrics=collect_metrics(outputs.values()))
    write_json_atomic(manifest_path, manifest)
    return RunResult(run_dir, manifest, outputs)


@dataclass
class _Step:
    """A step about to run: its inputs (available), cache key and manifest record."""

    sid: str
    pass_: Pass
    inputs: dict[str, Any]
    key: str
    record: dict[str, Any]


@dataclass
class _Run:
    """The state steps share while a run executes: what is done, the cache and the manifest."""

    pipe: Pipeline
    cache: Cache
    forced: set[str]
    manifest: dict[str, Any]
    manifest_path: Path
    outputs: dict[str, Handle]
    run_dir: Path
    seed: int
    threads: int
    display: ProgressDisplay
    pool: Executor
    log: logging.Logger
    # folders already shared with the executor: inputs do not change during a run, so each is hashed and sent once
    shipped: dict[Path, Shipped] = field(default_factory=dict)

    def prepare(self, sid: str) -> _Step | None:
        """The step with its key, or None when it is skipped (recorded)."""
        node = self.pipe.nodes[sid]
        p = node.pass_
        inputs = _available_inputs(node.wiring, node.many, self.outputs)
        if isinstance(inputs, str):
            self.manifest["steps"][sid] = {"pass": p.name, "config": p.config.model_dump(mode="json"), "inputs": node.wiring, "skipped": inputs}
            self.log.info("%s: skipped (%s)", sid, inputs)
            return None
        fingerprint = p.fingerprint()  # hashes whole model folders: once per step
        key = step_key(p, inputs, fingerprint, {"seed": self.seed, "threads": self.threads})
        if fingerprint:
            self.manifest["inputs"][sid] = fingerprint
        self.manifest["packages"] = dict(sorted({**self.manifest["packages"], **package_versions(p.packages_for(inputs))}.items()))
        return _Step(sid, p, inputs, key, {"pass": p.name, "config": p.config.model_dump(mode="json"), "inputs": node.wiring, "key": key})

    def _cached(self, step: _Step) -> Handle | None:
        return self.cache.lookup(step.pass_.name, step.key) if step.sid not in self.forced else None

    def _cached_or_claimed(self, step: _Step, held: contextlib.ExitStack) -> Handle | None:
        """The step's cached handle, or None with the entry's lock held (in ``held``) while this run produces it."""
        handle = self._cached(step)
        if handle is None:
            held.enter_context(self.cache.claim(step.pass_.name, step.key))
            handle = self._cached(step)  # another run sharing the cache may have made it while this one waited
        step.record["cache_hit"] = handle is not None
        if handle is not None:
            self.log.info("%s: cached (%s)", step.sid, step.key)
            self._finish(step, handle, time.perf_counter())
        return handle

    def context(self, step: _Step, work: Path) -> PassContext:
        return PassContext(step.sid, work, seed=self.seed, threads=self.threads, run_dir=self.run_dir,
                           progress_factory=self.display.task, executor=self.pool, manifest=self.manifest)

    def run_here(self, step: _Step) -> None:
        p, sid = step.pass_, step.sid
        with contextlib.ExitStack() as held:
            if self._cached_or_claimed(step, held) is not None:
                return
            t0 = time.perf_counter()
            self.log.info("%s: running %s", sid, p.name)
            work = self.cache.work_dir(p.name, step.key)
            try:
                outcome = run_pass(p, self.context(step, work), step.inputs)
            except BaseException as exc:  # an interrupt: the partial folder stays for a resume
                self._failed(step, work, exc)
                raise
            if outcome.skipped is not None:
                self._skipped(step, work, outcome.skipped)
            elif outcome.error is not None:
                self._failed(step, work, outcome.error)
                raise outcome.error
            else:
                self._commit(step, outcome.handle, work, outcome.seconds, outcome.peak_rss_mb, t0)

    def next_wave(self, pending: list[str]) -> list[_Step]:
        """Take from ``pending`` the portable steps whose inputs are all made and that ask for the same resources,
        so they run as tasks at once. Latency measurements go last and together: never beside other work."""
        graph, waves = self.pipe.graph, {}
        ready = [sid for sid in pending if self.pipe.nodes[sid].pass_.portable and not any(u in pending for u in graph.predecessors(sid))]
        for sid in ready:
            if (step := self.prepare(sid)) is None:
                pending.remove(sid)
            else:
                waves.setdefault(tuple(sorted(step.pass_.resources(**step.inputs).items())), []).append(step)
        wave = waves.get(()) or next(iter(waves.values()), [])
        for step in wave:
            pending.remove(step.sid)
        return wave

    def run_wave(self, steps: list[_Step]) -> None:
        """Run these steps as executor tasks at once; the driver commits each one's files into the cache."""
        if not steps:
            return
        with contextlib.ExitStack() as held:
            todo = [step for step in steps if self._cached_or_claimed(step, held) is None]
            if not todo:
                return
            self.log.info("%s: running as %d tasks on %s", ", ".join(s.sid for s in todo), len(todo), self.pool.spec)
            tasks = []
            for step in todo:
                folders = input_folders(step.inputs, self.cache.root)
                for folder in folders:
                    if folder not in self.shipped:
                        self.shipped[folder] = self.pool.share(folder)
                tasks.append(StepTask(step.sid, step.pass_, step.inputs, [self.shipped[f] for f in folders], self.seed, self.threads))
            t0 = time.perf_counter()
            with self.display.task(f"{len(todo)} steps on {self.pool.spec}", len(todo)) as bar:
                outcomes = self.pool.map(run_step, tasks, resources=todo[0].pass_.resources(**todo[0].inputs), on_result=lambda i, r: bar.advance(1))
            failure = None
            for step, outcome in zip(todo, outcomes):
                step.record["ran_as_task"] = {"node": outcome.node, "started": round(outcome.started, 3)}
                work = self.cache.work_dir(step.pass_.name, step.key)
                if outcome.skipped is not None:
                    self._skipped(step, work, outcome.skipped)
                elif outcome.error is not None:
                    self._failed(step, work, outcome.error)
                    failure = failure or outcome.error
                else:
                    shutil.rmtree(work)  # what a killed earlier attempt left: the task's folder is the whole output
                    work.mkdir()
                    unpack_folder(outcome.archive, work)
                    self._commit(step, outcome.handle.relocate(outcome.work, work), work, outcome.seconds, outcome.peak_rss_mb, t0)
            if failure is not None:
                raise failure

    def _commit(self, step: _Step, handle: Handle, work: Path, seconds: float, peak_mb: float, t0: float) -> None:
        # what producing the entry cost, kept with it: a later run that finds it cached still reports it
        write_json_atomic(work / COST, {"seconds": round(seconds, 3), "peak_rss_mb": round(peak_mb, 1), "threads": self.threads})
        self._finish(step, self.cache.commit(step.pass_.name, step.key, handle, work), t0)

    def _finish(self, step: _Step, handle: Handle, t0: float) -> None:
        if (cost := self.cache.entry(step.pass_.name, step.key) / COST).is_file():
            step.record["produced"] = json.loads(cost.read_text())
        self.manifest["steps"][step.sid] = step.record  # publish may read it (package's model cards list the steps)
        handle = step.pass_.publish(self.context(step, self.cache.entry(step.pass_.name, step.key)), handle)
        step.record["seconds"] = round(time.perf_counter() - t0, 3)
        self.outputs[step.sid] = handle
        self.manifest["steps"][step.sid] = step.record
        write_json_atomic(self.manifest_path, self.manifest)

    def _skipped(self, step: _Step, work: Path, reason: str) -> None:
        shutil.rmtree(work, ignore_errors=True)
        self.manifest["steps"][step.sid] = {**step.record, "skipped": reason}
        write_json_atomic(self.manifest_path, self.manifest)
        self.log.warning("%s: skipped: %s", step.sid, reason)

    def _failed(self, step: _Step, work: Path, exc: BaseException) -> None:
        if isinstance(exc, TailorfitError):  # bad input: nothing worth resuming from
            shutil.rmtree(work, ignore_errors=True)
        self.manifest["status"] = "failed"
        self.manifest["error"] = {"step": step.sid, "message": str(exc) or type(exc).__name__}
        self.manifest["steps"][step.sid] = step.record
        write_json_atomic(self.manifest_path, self.manifest)


def _writable_folder(folder: Path, what: str) -> None:
    """Make ``folder`` if missing; refuse a file or a folder this process cannot write, before any step runs."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise TailorfitError(f"{what} '{folder}' is a file, or lies under one", "point it at a folder") from None
    except PermissionError:
        raise TailorfitError(f"{what} '{folder}' cannot be made here (permission denied)", "point it at a folder you can write") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TailorfitError(f"{what} '{folder}' is not writable", "point it at a folder you can write, or fix its permissions")


def _report_previous(manifest_path: Path, log: logging.Logger) -> None:
    """Say what became of the last run in this folder, when it did not finish."""
    if not manifest_path.is_file():
        return
    try:
        previous = effective_status(json.loads(manifest_path.read_text()), manifest_path.parent)
    except (ValueError, OSError):
        return  # an unreadable old manifest is replaced; it records nothing this run needs
    if previous.get("status") == "interrupted":
        log.warning("the previous run here (pid %s on %s) was interrupted after step %s; its finished steps come from the cache",
                    previous["process"]["pid"], previous["process"]["host"], previous["last_finished_step"] or "none")
    elif previous.get("status") == "running":
        log.warning("another run (pid %s on %s) is still writing this folder: the two share the cache safely, but the later one's "
                    "manifest and candidates replace the other's", previous["process"]["pid"], previous["process"]["host"])


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

