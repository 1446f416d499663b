"""Logging and rich progress bars: a concise log, ``--quiet`` and ``--debug``."""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import rich
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tailorfit.pipeline.contract import ProgressTask

LOG_NAME = "tailorfit"
_console = Console(stderr=True)
# NNCF is not among them: it must create its own logger (a subclass with methods it calls), so it is quieted once
# imported (quiet_library)
_NOISY = ("openvino", "torch", "torchao", "transformers", "onnxscript", "onnxruntime", "optimum", "urllib3")


def setup_logging(quiet: bool = False, debug: bool = False) -> logging.Logger:
    log = logging.getLogger(LOG_NAME)
    log.handlers.clear()
    if sys.stderr.isatty():
        log.addHandler(RichHandler(console=_console, show_path=debug, show_time=True, markup=False, rich_tracebacks=debug))
    else:  # a pipeline's log file: rich would wrap and pad every record to 80 columns
        log.addHandler(_PlainHandler())
    log.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.ERROR)
    if not debug:
        # libraries drawing their own progress bars (NNCF's statistics collection, smooth quant, bias correction)
        # draw on rich's global console; tailorfit draws on its own (_console)
        rich.get_console().quiet = True
        # addressed to the libraries' developers, not to a user of them
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # torch sets its loggers' levels when first imported, after this, from this variable: errors only (torchao's
        # start-up warnings about its own enum registrations otherwise open every run's log)
        os.environ.setdefault("TORCH_LOGS", "-all")
    # rich shows tailorfit's own progress; Hugging Face's tqdm bars would interleave with it. Set through the
    # environment, read when those libraries are first imported, so the machinery imports none of them.
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "debug" if debug else "error")
    # a caller of run_pipeline may have imported them already, when the environment is no longer read
    if (transformers := sys.modules.get("transformers")) is not None:
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity(logging.DEBUG if debug else logging.ERROR)
    if (hub := sys.modules.get("huggingface_hub")) is not None:
        hub.utils.disable_progress_bars()
    return log


class _PlainHandler(logging.StreamHandler):
    """One line per record (time, level, message) on whatever ``sys.stderr`` is when the record is written."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass  # always the current sys.stderr: a test's capture, or a redirect made after setup


def quiet_library(name: str) -> None:
    """Re-apply the run's level to a library that sets its own when first imported, after ``setup_logging`` (NNCF:
    INFO, one line for every node it leaves unquantized); its own handlers included."""
    # INFO, not DEBUG, under --debug: NNCF at DEBUG writes its quantizer-propagation graphs into the working folder
    level = logging.INFO if logging.getLogger(LOG_NAME).isEnabledFor(logging.DEBUG) else logging.ERROR
    logger = logging.getLogger(name)
    logger.setLevel(level)
    for handler in logger.handlers:
        handler.setLevel(level)


class ProgressDisplay:
    """One rich Progress shared by all passes of a run, on a terminal; when stderr is a file or a pipe (a pipeline's
    log), each task instead logs a line at most every ``interval`` seconds; nothing when quiet."""

    def __init__(self, enabled: bool, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.enabled = enabled and sys.stderr.isatty()
        self.logging = enabled and not self.enabled
        self.interval, self.clock = interval, clock
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=_console, transient=True,
        )

    def __enter__(self) -> "ProgressDisplay":
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._progress.stop()

    @contextmanager
    def task(self, description: str, total: float | None) -> Iterator[ProgressTask]:
        if self.logging:
            yield ProgressTask(_LoggedProgress(description, total, self.interval, self.clock).advance)
            return
        if not self.enabled:
            yield ProgressTask()
            return
        tid = self._progress.add_task(description, total=total)
        try:
            yield ProgressTask(lambda n: self._progress.advance(tid, n))
        finally:
            self._progress.remove_task(tid)


class _LoggedProgress:
    """A task's progress as log lines, at most one per ``interval``: its count, total, elapsed time and what is left."""

    def __init__(self, description: str, total: float | None, interval: float, clock: Callable[[], float]):
        self.description, self.total, self.interval, self.clock = description, total, interval, clock
        self.done = 0.0
        self.started = self.last = clock()

    def advance(self, n: float) -> None:
        self.done += n
        now = self.clock()
        if now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.started
        if self.total:
            left = elapsed * (self.total - self.done) / self.done if self.done else None
            logging.getLogger(LOG_NAME).info("%s: %g of %g (%.0f%%), %s elapsed, about %s left", self.description, self.done, self.total,
                                             100 * self.done / self.total, _duration(elapsed), _duration(left) if left is not None else "?")
        else:
            logging.getLogger(LOG_NAME).info("%s: %g done, %s elapsed", self.description, self.done, _duration(elapsed))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
