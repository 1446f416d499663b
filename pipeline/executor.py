"""Executors: where a pass's parallel work runs.

A pass hands its executor a module-level function and a list of items; it gets the results back in input
order, whatever ran them. ``local`` (the default) calls the function in-process, item after item; ``local:N`` hands
items that ask for no resource to N worker processes of this machine (started on first use, kept until ``close``),
so one item's single-threaded Python (tracing, graph conversion) overlaps another's, while items asking for a
resource (timing on a target) still run in-process one at a time, alone on the CPU. ``ray`` runs
each item as a Ray task: retried up to 3 times when its worker or node dies (a Python error in a task is a bug,
so it is not retried but raised on the driver as the original exception), placed only on nodes advertising
the custom resources the pass asks for (e.g. ``{"openvino-cpu": 1}``: one such task per node at a time).

Large read-only inputs travel with ``share(folder)``: on Ray the folder goes into the object store once per
content (sharing it again reuses the stored copy) and is fetched and unpacked only by a node that lacks it, under
``<tmp>/tailorfit-shipped/<content hash>`` (aged out after a day unused, ``pipeline/scratch.py``); locally it stays where it is. A ``Shipped`` may travel inside any
task argument, not only as a top-level one.
Spec: ``local``, ``local:N``, ``ray`` (``$RAY_ADDRESS`` if set, else a Ray instance started on this machine),
``ray://HOST:PORT`` (Ray Client); no spec means ``ray`` when ``$RAY_ADDRESS`` is set, else ``local``.
"""
from __future__ import annotations

import io
import logging
import multiprocessing
import os
import re
import shutil
import socket
import tarfile
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.locations import content_hash
from tailorfit.pipeline.scratch import SHIPPED, sweep

_LOCAL = re.compile(r"^local(?::(?P<workers>[1-9]\d*))?$")
_RAY_CLIENT = re.compile(r"^ray://(?P<host>[^:/\s]+):(?P<port>\d+)$")
_HOST_PORT = re.compile(r"^(?:ray://)?(?P<host>[^:/\s]+):(?P<port>\d+)$")
_PROBE_SECONDS = 5.0
_MAX_RETRIES = 3


def parse_executor(spec: str | None) -> tuple[str, str | None]:
    """``(kind, detail)`` of an executor spec, without importing Ray: the address for ``ray`` (None: a local
    instance), the worker count for ``local:N`` (None: in-process). A bad spec is a one-line error."""
    if spec is None:
        address = os.environ.get("RAY_ADDRESS") or None
        return ("ray", address) if address else ("local", None)
    if local := _LOCAL.match(spec):
        return "local", local["workers"]
    if spec == "ray":
        return "ray", os.environ.get("RAY_ADDRESS") or None
    if _RAY_CLIENT.match(spec):
        return "ray", spec
    raise TailorfitError(f"unknown executor '{spec}'", "use local, local:N (N worker processes), ray, or ray://HOST:PORT")


@dataclass(frozen=True)
class Shipped:
    """A folder made available to tasks: ``local()`` is its path where the task runs."""

    origin: Path
    digest: str = ""
    archive: Any = None  # Ray object ref of the folder packed by ``pack_folder``; None when tasks run beside the origin

    def local(self) -> Path:
        if self.archive is None:
            return self.origin
        folder = Path(tempfile.gettempdir()) / SHIPPED / self.digest
        if folder.is_dir():
            os.utime(folder)  # in use: not aged out (scratch.sweep)
        else:
            sweep()  # a new folder on this node: first clear what dead processes and old runs left
            # unpack beside, then rename: a task on the same node unpacking at once never sees half a folder
            partial = folder.with_name(f"{self.digest}.partial-{uuid.uuid4().hex}")
            import ray

            unpack_folder(ray.get(self.archive), partial)
            try:
                os.rename(partial, folder)
            except OSError:  # another task got there first
                shutil.rmtree(partial, ignore_errors=True)
        return folder


def pack_folder(folder: Path) -> np.ndarray:
    """A folder's files as an uncompressed tar; a numpy array is read from Ray's object store without a copy,
    bytes would be copied into every task."""
    buffer = io.BytesIO()
    # dereferenced: a Hugging Face hub snapshot is symlinks into a blob store that does not travel
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as tar:
        for path in sorted(Path(folder).iterdir()):
            tar.add(path, arcname=path.name)
    return np.frombuffer(buffer.getbuffer(), dtype=np.uint8)


def unpack_folder(archive: np.ndarray, folder: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(archive.tobytes())) as tar:
        tar.extractall(folder, filter="data")


class Executor:
    """``map`` runs ``fn(item, **shared_args)`` for every item and returns the results in input order; ``on_result(i, result)``
    is called as each finishes (in any order), so a caller can keep each result before the others are done."""

    spec: str
    distributed = False  # whether independent recipe steps are worth handing over together (pipeline/step_tasks.py)
    parallel = 1  # how many items of one map share this machine's CPUs at once: a task's fair share of threads

    def map(self, fn: Callable[..., Any], items: Sequence[Any], shared_args: dict[str, Any] | None = None,
            resources: dict[str, float] | None = None, on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        raise NotImplementedError

    def share(self, folder: Path) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor started (a Ray instance it launched); a connection it reused stays up."""


class LocalExecutor(Executor):
    """In-process, item after item; with ``workers`` > 1, items asking for no resource go to that many spawned
    worker processes (spawned, not forked: a forked copy of a process whose torch and OpenVINO thread pools are
    running can deadlock)."""

    def __init__(self, workers: int = 1):
        self.workers = self.parallel = workers
        self.spec = "local" if workers == 1 else f"local:{workers}"
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn, items, shared_args=None, resources=None, on_result=None):
        if resources or self.workers == 1 or len(items) < 2:
            out = []
            for i, item in enumerate(items):
                out.append(fn(item, **(shared_args or {})))
                if on_result:
                    on_result(i, out[-1])
            return out
        if self._pool is None:
            from tailorfit.pipeline.console import setup_logging

            # a worker logs warnings only, as the run's own log would with --quiet; libraries stay silent
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=setup_logging, initargs=(True,))
        futures = {self._pool.submit(fn, item, **(shared_args or {})): i for i, item in enumerate(items)}
        out: list[Any] = [None] * len(items)
        try:
            for future in as_completed(futures):
                out[futures[future]] = future.result()  # a task's own exception is raised here, as if it had run here
                if on_result:
                    on_result(futures[future], out[futures[future]])
        except BrokenProcessPool:
            self.close()  # the pool is unusable; the next map starts a new one
            raise TailorfitError(f"a worker process of executor {self.spec} died (killed, or out of memory?) while running {fn.__name__}",
                                 "run again to resume (finished work is kept), with fewer workers if memory ran out") from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return out

    def share(self, folder: Path) -> Shipped:
        return Shipped(Path(folder))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class RayExecutor(Executor):
    """Connects on first use, so a run whose steps are all cached starts nothing; the address is probed at once."""

    distributed = True

    def __init__(self, address: str | None):
        try:
            import ray
        except ImportError:
            raise TailorfitError("executor 'ray' needs the ray extra", "pip install 'tailorfit[ray]'") from None
        self._ray, self._address = ray, address
        self._remote: dict[Callable, Any] = {}
        self._stored: dict[str, Any] = {}  # content hash -> object ref of a shared folder
        self._owned = False
        self.spec = f"ray ({address})" if address else "ray (local instance)"
        if address and (hp := _HOST_PORT.match(address)):
            _probe(hp["host"], int(hp["port"]), address)

    def _connect(self) -> None:
        ray, address = self._ray, self._address
        if ray.is_initialized():  # connected already: by an earlier call, or by a caller (a notebook, a test) whose connection stays up
            return
        # a local instance runs on this machine, which has every (CPU) target; a cluster advertises its own
        options: dict[str, Any] = {"address": address} if address else {"address": "local", "resources": _local_target_resources(), "include_dashboard": False}
        try:
            # workers' stdout would land on the driver's stdout, which carries the run folder for scripts
            ray.init(**options, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise TailorfitError(f"cannot connect to Ray at {address or 'a new local instance'}: {str(err).splitlines()[0][:200]}",
                                 "start it with `ray start --head` or fix --executor") from None
        self._owned = True

    def map(self, fn, items, shared_args=None, resources=None, on_result=None):
        if not items:
            return []
        self._connect()
        ray = self._ray
        if resources:
            self._require(resources)
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = ray.remote(max_retries=_MAX_RETRIES)(fn)
        refs = [remote.options(resources=resources or {}).remote(item, **(shared_args or {})) for item in items]
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                if on_result:
                    on_result(index[done[0]], ray.get(done[0]))
            return ray.get(refs)
        except ray.exceptions.RayTaskError as err:
            if err.cause is None:
                raise
            raise err.cause from err  # the task's own error, as if it had run here

    def share(self, folder: Path) -> Shipped:
        folder = Path(folder)
        digest = content_hash(folder)
        if digest not in self._stored:
            self._connect()
            self._stored[digest] = self._ray.put(pack_folder(folder))
        return Shipped(folder, digest, self._stored[digest])

    def _require(self, resources: dict[str, float]) -> None:
        """Refuse at once what no node can run: Ray would otherwise keep such a task pending for ever."""
        available = self._ray.cluster_resources()
        missing = {name: amount for name, amount in resources.items() if available.get(name, 0) < amount}
        if missing:
            name = next(iter(missing))
            raise TailorfitError(f"no Ray node advertises the resource '{name}' (the cluster has: {', '.join(sorted(available))})",
                                 f"start a node on that hardware with `ray start --resources='{{\"{name}\": 1}}'`")

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()


def _local_target_resources() -> dict[str, float]:
    from tailorfit.pipeline.plugins import targets

    return {name: 1 for name in targets()}


def _probe(host: str, port: int, address: str) -> None:
    """Fail in seconds on a wrong address; ``ray.init`` would retry for minutes."""
    try:
        socket.create_connection((host, port), timeout=_PROBE_SECONDS).close()
    except OSError:
        raise TailorfitError(f"cannot reach Ray at {address}", "start it with `ray start --head` or fix --executor") from None


def executor_from(spec: str | None) -> Executor:
    kind, detail = parse_executor(spec)
    return LocalExecutor(int(detail or 1)) if kind == "local" else RayExecutor(detail)
