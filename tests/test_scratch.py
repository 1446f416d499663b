"""Scratch folders: a killed process's are removed by the next sweep, a live one's never; shipped folders age out."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tailorfit.pipeline.scratch import SHIPPED, SHIPPED_MAX_AGE, scratch_dir, sweep


def test_sweep_removes_what_dead_processes_left_and_nothing_of_live_ones():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    root = Path(tempfile.gettempdir())
    orphan = Path(tempfile.mkdtemp(prefix=f"tailorfit-latency-{dead}-"))
    (orphan / "model.bin").write_bytes(b"x" * 1024)
    with scratch_dir("step") as mine:
        old, fresh = root / SHIPPED / "old-test-digest", root / SHIPPED / "fresh-test-digest"
        for folder in (old, fresh):
            folder.mkdir(parents=True, exist_ok=True)
        then = time.time() - SHIPPED_MAX_AGE - 60
        os.utime(old, (then, then))
        removed = sweep()
        assert orphan in removed and not orphan.exists()
        assert Path(mine).is_dir() and f"tailorfit-step-{os.getpid()}-" in mine  # this process is alive
        assert old in removed and not old.exists() and fresh.is_dir()
        fresh.rmdir()
    assert not Path(mine).exists()
