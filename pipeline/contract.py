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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping

from tailorfit.pipeline.config_model import ConfigModel
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.executor import Executor, LocalExecutor
from tailorfit.pipeline.handles import Handle
from tailorfit.pipeline.plugins import load_passes


class PassConfig(ConfigModel):
    """Base of every pass's config (see ConfigModel: unknown fields and booleans for numbers are errors)."""


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
    """What a pass may touch: its own output directory, the run-wide settings, and the executor it hands parallel work to.

    Built by the runner for a step, by ``child`` for a pass run inside another (a search running extract and lower),
    and directly, with only the first four fields, by code that runs a pass outside a pipeline (the bench, tests).
    """

    step_id: str
    work_dir: Path  # the pass's output directory; renamed into the cache when run returns
    seed: int
    threads: int
    run_dir: Path | None = None  # the run's artifact directory (only ``publish`` writes there); work_dir outside a run
    log: logging.Logger | None = None  # tailorfit.<step_id> unless given
    progress_factory: Callable[[str, float | None], Any] | None = None
    executor: Executor = field(default_factory=LocalExecutor)  # where the pass's parallel work runs
    manifest: dict[str, Any] = field(default_factory=dict)  # the run's manifest so far (read-only for passes)

    def __post_init__(self) -> None:
        self.run_dir = self.run_dir or self.work_dir
        self.log = self.log or logging.getLogger(f"tailorfit.{self.step_id}")

    def child(self, step_id: str, work_dir: Path) -> "PassContext":
        """A context for a pass run inside this one: the same settings, its own folder, no progress bars."""
        return replace(self, step_id=step_id, work_dir=work_dir, log=None, progress_factory=None)

    @contextmanager
    def progress(self, description: str, total: float | None = None) -> Iterator[ProgressTask]:
        if self.progress_factory is None:
            yield ProgressTask()
            return
        with self.progress_factory(f"{self.step_id}: {description}", total) as task:
            yield task


# called with every step's context in the process about to run it (the runner's, or an executor task's): a domain
# package registers here what each process needs, e.g. the torch thread count
BEFORE_EACH_STEP: list[Callable[[PassContext], None]] = []


PASSES: dict[str, type["Pass"]] = {}

# What is known of a step's output before anything runs (a model's family and layer count): read-only, flowing
# along the recipe's wiring from each step's ``ensures`` to the ``requires`` of the steps its output feeds.
Facts = Mapping[str, Any]
# a port's facts: one mapping for a single port, one per wired branch (in wiring order) for a list port
PortFacts = dict[str, "Facts | list[Facts]"]


class Pass:
    """Base class of every pass. Subclasses set ``name``, ``Config`` and implement ``run``.

    ``packages`` lists the distributions whose versions enter the cache key (upgrading
    OpenVINO invalidates lowered models, not fine-tuned weights); a pass serving a target adds that
    target's in ``packages_for``. ``version`` is bumped when a pass's behaviour changes so stale cache
    entries are not reused.
    """

    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    packages: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[int] = 1
    # the run settings (PassContext fields) its output depends on: they enter the cache key, so a run with another
    # seed never takes this step's output from a run with the first
    keyed_context: ClassVar[tuple[str, ...]] = ("seed",)
    # reads only the folders its input handles point into and writes only its work_dir, so on a distributed
    # executor it may run as a task on another node beside other such steps (pipeline/step_tasks.py)
    portable: ClassVar[bool] = False

    def __init__(self, config: PassConfig):
        self.config = config

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            known = PASSES.get(cls.name)
            if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
                raise TailorfitError(f"two passes are named '{cls.name}' ({known.__module__}.{known.__qualname__} and {cls.__module__}.{cls.__qualname__})",
                                     "rename one of them: recipes name passes by 'name'")
            PASSES[cls.name] = cls

    def run(self, ctx: PassContext, **inputs: Any) -> Handle:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Content hash of anything outside the cache this pass reads (a model folder, a data file)."""
        return ""

    def packages_for(self, inputs: dict[str, Any]) -> tuple[str, ...]:
        """The distributions whose versions decide this step's output, given its input handles."""
        return self.packages

    def requires(self, inputs: PortFacts) -> None:
        """Precondition checked before anything runs, on the facts its input ports will carry; raise TailorfitError."""

    def ensures(self, inputs: PortFacts) -> Facts:
        """Postcondition: what this step's output will be, known before running. By default the facts of the first
        single input port in ``run``'s signature pass through (a pass turning a model into another keeps what it
        does not change); a pass that makes something new, or changes a fact, overrides this."""
        first = next((v for v in inputs.values() if not isinstance(v, list)), {})
        return first

    def caveats(self, host: Mapping[str, Any]) -> list[str]:
        """What this step's measurements mean on the machine described by ``host`` (``pipeline/host.py``), said once
        when a run starts and kept in its manifest: a pass timing INT8 models on a CPU without INT8 instructions says so."""
        return []

    def resources(self, **inputs: Any) -> dict[str, float]:
        """Custom resources a node must advertise to run this step as a task (a latency measurement: its target's)."""
        return {}

    def publish(self, ctx: PassContext, handle: Handle) -> Handle:
        """Place a finished (or cached) output where a user looks for it, outside the cache: ``package`` links its
        candidates into the run folder. Called after every run of the step, cached or not; must be cheap."""
        return handle

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
    load_passes()
    if name not in PASSES:
        raise TailorfitError(f"unknown pass '{name}'", f"use one of: {', '.join(sorted(PASSES))} (see `tailorfit passes`)")
    return PASSES[name]


def all_passes() -> dict[str, type[Pass]]:
    load_passes()
    return dict(sorted(PASSES.items()))
