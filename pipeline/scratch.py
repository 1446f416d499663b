"""Scratch folders in the system temp dir, named after the process that made them.

A scratch folder is removed when its ``with`` block ends, however it ends; a process killed outright (SIGKILL, a
lost node) cannot, so the next tailorfit process on that host removes the folders of processes that are gone. A
folder shipped to a node (``<tmp>/tailorfit-shipped/<hash>``) is kept for later runs and aged out when unused.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import psutil

PREFIX = "tailorfit-"
SHIPPED = "tailorfit-shipped"
SHIPPED_MAX_AGE = 24 * 3600  # seconds a shipped folder may go unused before it is removed
_OWNED = re.compile(rf"^{PREFIX}[a-z]+-(\d+)-")


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary folder ``tailorfit-<kind>-<pid>-…`` (use it as a context manager)."""
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{kind}-{os.getpid()}-")


def sweep() -> list[Path]:
    """Remove the scratch folders of processes that no longer exist, and shipped folders unused for a day; return them."""
    root, removed = Path(tempfile.gettempdir()), []
    for folder in root.glob(f"{PREFIX}*"):
        owner = _OWNED.match(folder.name)
        if owner and folder.is_dir() and not psutil.pid_exists(int(owner.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    now = time.time()
    for folder in (root / SHIPPED).glob("*"):
        if folder.is_dir() and now - folder.stat().st_mtime > SHIPPED_MAX_AGE:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
