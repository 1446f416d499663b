"""The pass contract: what every pass declares, what it is given, and the registry of passes.

A pass is a class with a ``name`` (used in recipes), a typed ``Config`` and a
``run(ctx, **inputs) -> Handle`` method. Its input ports and output kind are read from
``run``'s type hints, so they cannot drift from the code: ``model: HFModel`` is a port
taking one handle, ``models: list[Lowered]`` a port taking every matching branch (with a default,
``searches: list[SearchResult] = ()``, one that may take none).
"""
from __future__ import annotations

import inspect
import logging
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict

from .errors import TailorfitError
from .executor import Executor, LocalExecutor
from .handles import Handle


class PassConfig(BaseModel):
    """Base of every pass's config: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Port:
    name: str
    kind: type[Handle]
    many: bool = False
    optional: bool = False  # a list port with a default may find no branch to take


class ProgressTask:
    """What a pass advances; a no-op when progress display is off."""

    def __init__(self, advance: Callable[[float], None] = lambda n: None):
        self._advance = advance

    def advance(self, n: float = 1) -> None:
        self._advance(n)


@dataclass
class PassContext:
    """What a pass may touch: its own output directory, the run-wide settings, and the executor it hands parallel work to."""

    step_id: str
    work_dir: Path  # the pass's output directory; renamed into the cache when run returns
    run_dir: Path  # the run's artifact directory (only ``package`` writes there)
    seed: int
    threads: int
    log: logging.Logger
    progress_factory: Callable[[str, float | None], Any] | None = None
    executor: Executor = field(default_factory=LocalExecutor)  # where the pass's parallel work runs
    extras: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def progress(self, description: str, total: float | None = None) -> Iterator[ProgressTask]:
        if self.progress_factory is None:
            yield ProgressTask()
            return
        with self.progress_factory(f"{self.step_id}: {description}", total) as task:
            yield task


PASSES: dict[str, type["Pass"]] = {}


class Pass:
    """Base class of every pass. Subclasses set ``name``, ``Config`` and implement ``run``.

    ``packages`` lists the distributions whose versions enter the cache key (upgrading
    OpenVINO invalidates lowered models, not fine-tuned weights). ``version`` is bumped when
    a pass's behaviour changes so stale cache entries are not reused.
    """

    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    packages: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[int] = 1
    cached: ClassVar[bool] = True
    # reads only the folders its input handles point into and writes only its work_dir, so on a distributed
    # executor it may run as a task on another node beside other such steps (pipeline/step_tasks.py)
    portable: ClassVar[bool] = False

    def __init__(self, config: PassConfig):
        self.config = config

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            PASSES[cls.name] = cls

    def run(self, ctx: PassContext, **inputs: Any) -> Handle:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Content hash of anything outside the cache this pass reads (a model folder, a data file)."""
        return ""

    def preflight(self, facts: dict[str, Any]) -> None:
        """Checks that can run before anything executes, given facts from upstream ``describe`` calls."""

    def resources(self, **inputs: Any) -> dict[str, float]:
        """Custom resources a node must advertise to run this step as a task (a latency measurement: its target's)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Cheap facts about this step's output, known before running (e.g. a model's layer count)."""
        return {}

    @classmethod
    def ports(cls) -> list[Port]:
        hints = typing.get_type_hints(cls.run)
        ports = []
        for pname, param in list(inspect.signature(cls.run).parameters.items())[2:]:
            hint = hints[pname]
            many = typing.get_origin(hint) is list
            kind = typing.get_args(hint)[0] if many else hint
            ports.append(Port(pname, kind, many, optional=many and param.default is not inspect.Parameter.empty))
        return ports

    @classmethod
    def produces(cls) -> type[Handle]:
        return typing.get_type_hints(cls.run)["return"]


def get_pass(name: str) -> type[Pass]:
    import tailorfit.passes  # noqa: F401  (registers the built-in passes)

    if name not in PASSES:
        raise TailorfitError(f"unknown pass '{name}'", f"use one of: {', '.join(sorted(PASSES))} (see `tailorfit passes`)")
    return PASSES[name]


def all_passes() -> dict[str, type[Pass]]:
    import tailorfit.passes  # noqa: F401

    return dict(sorted(PASSES.items()))
