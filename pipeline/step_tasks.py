"""Running one step: ``run_pass`` is the only caller of a pass's ``run``, in-process for the runner and inside an
executor task. On a distributed executor the runner hands independent ready steps of portable passes
(``select``'s branches: each pick's lower, quantize, evaluate and benchmark) over together as tasks.

A task gets the step's pass, its input handles and the folders those handles point into (shipped: on Ray each
goes into the object store once and is unpacked once per node); it runs the pass in a scratch folder of its own
and returns the handle with the folder's files. The driver alone writes the cache and the manifest. A pass's
error or skip comes back as a value, so the wave's other steps are still committed before the run stops.
"""
from __future__ import annotations

import contextlib
import pickle
import socket
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tailorfit.pipeline.contract import BEFORE_EACH_STEP, Pass, PassContext
from tailorfit.pipeline.errors import StepSkipped
from tailorfit.pipeline.executor import Shipped, pack_folder
from tailorfit.pipeline.handles import Handle
from tailorfit.pipeline.host import PeakMemory
from tailorfit.pipeline.scratch import scratch_dir


@dataclass(frozen=True)
class StepTask:
    step_id: str
    pass_: Pass
    inputs: dict[str, Handle | list[Handle]]  # paths as on the driver
    folders: list[Shipped]  # every folder the inputs point into
    seed: int
    threads: int


@dataclass(frozen=True)
class StepOutcome:
    """How a step's run ended: exactly one of ``handle`` (paths under ``work``), ``skipped`` or ``error``; a task adds
    ``archive`` (the work folder's files) for the driver to unpack."""

    step_id: str
    node: str
    started: float  # wall clock (time.time), to show what ran beside what
    seconds: float
    peak_rss_mb: float
    work: Path | None = None
    handle: Handle | None = None
    archive: np.ndarray | None = None
    skipped: str | None = None
    error: Exception | None = None


def run_pass(pass_: Pass, ctx: PassContext, inputs: dict[str, Any]) -> StepOutcome:
    """Run a pass on its inputs in the process at hand; a skip or an error comes back as a value (an interrupt is raised)."""
    for setup in BEFORE_EACH_STEP:
        setup(ctx)
    started, t0 = time.time(), time.perf_counter()
    memory = PeakMemory()
    done = dict(step_id=ctx.step_id, node=socket.gethostname(), started=started, work=ctx.work_dir)
    try:
        # libraries print progress to stdout; keep stdout for results (the CLI prints the run directory there)
        with contextlib.redirect_stdout(sys.stderr), memory:
            handle = pass_.run(ctx, **inputs)
    except StepSkipped as skip:
        return StepOutcome(**done, seconds=time.perf_counter() - t0, peak_rss_mb=memory.peak_mb, skipped=str(skip))
    except Exception as exc:
        return StepOutcome(**done, seconds=time.perf_counter() - t0, peak_rss_mb=memory.peak_mb, error=exc)
    return StepOutcome(**done, seconds=time.perf_counter() - t0, peak_rss_mb=memory.peak_mb, handle=handle)


def input_folders(inputs: dict[str, Handle | list[Handle]], cache_root: Path) -> list[Path]:
    """The folders a step's input handles point into: a cache entry as a whole, anything else its own folder."""
    found: set[Path] = set()
    for value in inputs.values():
        for handle in value if isinstance(value, list) else [value]:
            for path in handle.paths():
                if not path.exists():
                    continue
                if path.is_relative_to(cache_root) and len(path.relative_to(cache_root).parts) >= 2:
                    found.add(cache_root.joinpath(*path.relative_to(cache_root).parts[:2]))
                else:
                    found.add(path if path.is_dir() else path.parent)
    # a folder inside another travels with it
    return sorted(f for f in found if not any(o != f and f.is_relative_to(o) for o in found))


def run_step(task: StepTask) -> StepOutcome:
    """Run one step where the executor put it; module-level so any executor can ship it."""
    here = {s.origin: s.local() for s in task.folders}
    inputs = {port: [_moved(h, here) for h in v] if isinstance(v, list) else _moved(v, here) for port, v in task.inputs.items()}
    with scratch_dir("step") as scratch:
        work = Path(scratch) / "work"
        work.mkdir()
        outcome = run_pass(task.pass_, PassContext(task.step_id, work, seed=task.seed, threads=task.threads), inputs)
        if outcome.error is not None:
            return replace(outcome, error=_portable_error(outcome.error, task.step_id))
        if outcome.handle is None:
            return outcome
        handle = outcome.handle
        for origin, local in here.items():  # inputs the handle carries point back at the driver's copies
            handle = handle.relocate(local, origin)
        return replace(outcome, handle=handle, archive=pack_folder(work))


def _moved(handle: Handle, here: dict[Path, Path]) -> Handle:
    for origin, local in here.items():
        handle = handle.relocate(origin, local)
    return handle


def _portable_error(exc: Exception, step_id: str) -> Exception:
    """The pass's own exception, with where it happened; one that cannot be pickled comes back as a RuntimeError."""
    where = f"in step '{step_id}' on {socket.gethostname()}:\n{''.join(traceback.format_exception(exc))}"
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}\n{where}")
    exc.add_note(where)
    return exc
