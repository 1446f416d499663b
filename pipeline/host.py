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


# the instructions that make a precision fast on a CPU; without them the runtime emulates it with wider ones
_NATIVE = {
    "int8": ({"avx512_vnni", "avx_vnni", "amx_int8"}, "no INT8 dot-product instructions (VNNI or AMX)", "INT8 layers may run slower than FP32"),
    "bf16": ({"avx512_bf16", "amx_bf16"}, "no bf16 instructions (AVX512_BF16 or AMX)", "bf16 would be emulated or silently run in f32"),
}


def has_native(precision: str, host: dict[str, Any] | None = None) -> bool:
    """Whether the CPU has instructions that compute ``precision`` (``int8``, ``bf16``; anything else: True)."""
    return precision not in _NATIVE or bool(_NATIVE[precision][0] & set((host or host_info()).get("isa", ())))


def lacks_native(precision: str, host: dict[str, Any] | None = None) -> str | None:
    """A sentence saying that the CPU lacks native instructions for ``precision`` and what that means for latency
    measured on it, or None when it has them."""
    host = host or host_info()
    if has_native(precision, host):
        return None
    _, missing, effect = _NATIVE[precision]
    return f"{host.get('cpu', 'this CPU')} has {missing}: {effect} on it, so its latencies do not carry over to a CPU that has them"


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
