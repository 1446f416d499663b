"""Progress in a pipeline's log: with stderr not a terminal, a long task logs its count, total and time left at most
once a minute (a terminal gets rich's bars instead; --quiet gets neither)."""
from __future__ import annotations

import logging

from tailorfit.pipeline.console import LOG_NAME, ProgressDisplay


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _advance_for(display: ProgressDisplay, now: list[float], seconds: int, total: float | None) -> None:
    with display.task("fine-tuning", total) as task:
        for _ in range(seconds // 10):
            now[0] += 10
            task.advance(1)


def test_a_long_task_logs_a_line_a_minute_when_stderr_is_not_a_terminal():
    handler, log = _Lines(), logging.getLogger(LOG_NAME)
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        now = [0.0]
        display = ProgressDisplay(enabled=True, clock=lambda: now[0])  # pytest's captured stderr is no terminal
        assert display.logging and not display.enabled
        _advance_for(display, now, 300, total=30)
        assert handler.lines == [
            "fine-tuning: 6 of 30 (20%), 1m00s elapsed, about 4m00s left", "fine-tuning: 12 of 30 (40%), 2m00s elapsed, about 3m00s left",
            "fine-tuning: 18 of 30 (60%), 3m00s elapsed, about 2m00s left", "fine-tuning: 24 of 30 (80%), 4m00s elapsed, about 1m00s left",
            "fine-tuning: 30 of 30 (100%), 5m00s elapsed, about 0s left",
        ]
        handler.lines.clear()
        _advance_for(display, now, 50, total=30)  # under a minute: nothing
        _advance_for(display, now, 70, total=None)
        assert handler.lines == ["fine-tuning: 6 done, 1m00s elapsed"]
        handler.lines.clear()
        _advance_for(ProgressDisplay(enabled=False, clock=lambda: now[0]), now, 300, total=30)  # --quiet
        assert handler.lines == []
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
