"""Recipe steps as executor tasks: on a distributed executor the runner hands independent ready steps of portable
passes (``select``'s branches: each pick's lower, quantize, evaluate and benchmark) over together.

A task gets the step's pass, its input handles and the folders those handles point into (shipped: on Ray each
goes into the object store once and is unpacked once per node); it runs the pass in a scratch folder of its own
and returns the handle with the folder's files. The driver alone writes the cache and the manifest. A pass's
error or skip comes back as a value, so the wave's other steps are still committed before the run stops.
"""
from __future__ import annotations

import logging
import pickle
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .contract import Pass, PassContext
from .errors import StepSkipped
from .executor import Shipped, pack_folder
from .handles import Handle
from .host import PeakMemory


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
    """What a step task returns: exactly one of ``handle`` (paths under ``work``, files in ``archive``), ``skipped`` or ``error``."""

    step_id: str
    node: str
    started: float  # wall clock (time.time), to show what ran beside what
    seconds: float
    peak_rss_mb: float
    work: Path | None = None
    handle: Handle | None = None
    archive: np.ndarray | None = None
    skipped: str | None = None
    error: BaseException | None = None


def input_folders(inputs: dict[str, Handle | list[Handle]], cache_root: Path) -> list[Path]:
    """The folders a step's input handles point into: a cache entry as a whole, anything else its own folder."""
    found: set[Path] = set()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str) and value.startswith("/") and Path(value).exists():
            path = Path(value)
            if path.is_relative_to(cache_root) and len(path.relative_to(cache_root).parts) >= 2:
                found.add(cache_root.joinpath(*path.relative_to(cache_root).parts[:2]))
            else:
                found.add(path if path.is_dir() else path.parent)

    for value in inputs.values():
        for handle in value if isinstance(value, list) else [value]:
            visit(handle.model_dump(mode="json"))
    # a folder inside another travels with it
    return sorted(f for f in found if not any(o != f and f.is_relative_to(o) for o in found))


def run_step(task: StepTask) -> StepOutcome:
    """Run one step where the executor put it; module-level so any executor can ship it."""
    import torch

    torch.set_num_threads(task.threads)  # a Ray worker starts with one thread per CPU it was given
    here = {s.origin: s.local() for s in task.folders}
    inputs = {port: [_moved(h, here) for h in v] if isinstance(v, list) else _moved(v, here) for port, v in task.inputs.items()}
    started, t0 = time.time(), time.perf_counter()
    node = socket.gethostname()
    with tempfile.TemporaryDirectory(prefix="tailorfit-step-") as scratch:
        work = Path(scratch) / "work"
        work.mkdir()
        ctx = PassContext(step_id=task.step_id, work_dir=work, run_dir=work, seed=task.seed, threads=task.threads,
                          log=logging.getLogger(f"tailorfit.{task.step_id}"))
        done = dict(step_id=task.step_id, node=node, started=started)
        memory = PeakMemory()
        try:
            with memory:
                handle = task.pass_.run(ctx, **inputs)
        except StepSkipped as skip:
            return StepOutcome(**done, seconds=time.perf_counter() - t0, peak_rss_mb=memory.peak_mb, skipped=str(skip))
        except Exception as exc:
            return StepOutcome(**done, seconds=time.perf_counter() - t0, peak_rss_mb=memory.peak_mb, error=_portable_error(exc, task.step_id))
        for origin, local in here.items():  # inputs the handle carries point back at the driver's copies
            handle = handle.relocate(local, origin)
        return StepOutcome(**done, seconds=time.perf_counter() - t0, peak_rss_mb=memory.peak_mb, work=work, handle=handle, archive=pack_folder(work))


def _moved(handle: Handle, here: dict[Path, Path]) -> Handle:
    for origin, local in here.items():
        handle = handle.relocate(origin, local)
    return handle


def _portable_error(exc: Exception, step_id: str) -> Exception:
    """The pass's own exception, with where it happened; one that cannot be pickled comes back as a RuntimeError."""
    where = f"in step '{step_id}' on {socket.gethostname()}:\n{traceback.format_exc()}"
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}\n{where}")
    exc.add_note(where)
    return exc
