"""Logging and rich progress bars: a concise log, ``--quiet`` and ``--debug``."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tailorfit.pipeline.contract import ProgressTask

LOG_NAME = "tailorfit"
_console = Console(stderr=True)
_NOISY = ("nncf", "openvino", "torch", "torchao", "transformers", "onnxscript", "onnxruntime", "optimum", "urllib3")


def setup_logging(quiet: bool = False, debug: bool = False) -> logging.Logger:
    log = logging.getLogger(LOG_NAME)
    log.handlers.clear()
    handler = RichHandler(console=_console, show_path=debug, show_time=True, markup=False, rich_tracebacks=debug)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.ERROR)
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


class ProgressDisplay:
    """One rich Progress shared by all passes of a run; disabled when quiet or not a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
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
        if not self.enabled:
            yield ProgressTask()
            return
        tid = self._progress.add_task(description, total=total)
        try:
            yield ProgressTask(lambda n: self._progress.advance(tid, n))
        finally:
            self._progress.remove_task(tid)
