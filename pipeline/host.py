"""Facts about the machine a run happens on, recorded in manifests and model cards."""
from __future__ import annotations

import os
import platform
import threading
from functools import lru_cache
from typing import Any

import psutil


@lru_cache
def host_info() -> dict[str, Any]:
    cpu, flags = platform.processor() or "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "avx_vnni"})
    return {
        "cpu": cpu,
        "isa": isa,
        "logical_cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class PeakMemory:
    """Peak resident memory (MB) of this process and its children while the block runs, sampled every ``interval``
    seconds: ``ru_maxrss`` is the process's lifetime high-water mark, so it cannot tell one step's peak."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss_mb(self) -> float:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:  # a child that ended between listing and reading
                pass
        return total / 2**20

    def _sample(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, self._rss_mb())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())
