"""Whether a run said to be running still is: the process that runs it, and a heartbeat it keeps.

A killed run cannot mark its own manifest, which then says ``running`` for ever. The manifest records the
process (host, pid, start time) and the run touches ``.heartbeat`` in its folder while it runs; a reader
calls a run ``interrupted`` when that process is gone (same host) or the heartbeat has stopped (another host).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psutil

HEARTBEAT = ".heartbeat"
BEAT_SECONDS = 30
STALE_SECONDS = 4 * BEAT_SECONDS  # a heartbeat this old means the run is gone, when its host cannot be asked


def this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def _alive(process: dict[str, Any]) -> bool:
    try:
        return abs(psutil.Process(process["pid"]).create_time() - process["started"]) < 1  # the pid may have been reused
    except (psutil.NoSuchProcess, KeyError):
        return False


def effective_status(manifest: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The manifest, with a ``running`` status its process no longer backs turned into ``interrupted`` (plus the last
    finished step)."""
    process = manifest.get("process")
    if manifest.get("status") != "running" or process is None:
        return manifest
    if process.get("host") == socket.gethostname():
        gone = not _alive(process)
    else:
        beat = run_dir / HEARTBEAT
        gone = not beat.is_file() or time.time() - beat.stat().st_mtime > STALE_SECONDS
    if not gone:
        return manifest
    finished = [sid for sid in manifest.get("order", []) if "seconds" in manifest.get("steps", {}).get(sid, {})]
    return {**manifest, "status": "interrupted", "last_finished_step": finished[-1] if finished else None}


class Heartbeat:
    """Touches ``<run_dir>/.heartbeat`` every ``BEAT_SECONDS`` while the run lasts (a daemon thread)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / HEARTBEAT
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="tailorfit-heartbeat")

    def _beat(self) -> None:
        while True:
            self.path.touch()
            if self._stop.wait(BEAT_SECONDS):
                return

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
