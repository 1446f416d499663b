"""The content-addressed cache of pass outputs.

An entry lives at ``<root>/<pass>/<key>/`` with its handle in ``handle.json`` (paths inside the cache relative to
its root, so the cache can move). A pass writes
into ``<key>.partial/`` (kept across a kill, so long passes can resume from checkpoints in it)
and the folder is renamed into place only when the pass returns: an entry either exists
whole or not at all. A run producing an entry holds its lock, so runs sharing a cache never share a partial folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from tailorfit.pipeline.contract import Pass
from tailorfit.pipeline.handles import HANDLE_KINDS, Handle

log = logging.getLogger("tailorfit.cache")


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def step_key(p: Pass, inputs: dict[str, Handle | list[Handle]], fingerprint: str, context: dict[str, Any] | None = None) -> str:
    """Hash of everything that determines a pass's output; ``fingerprint`` is ``p.fingerprint()``, computed once by the
    caller. Packages are ``p.packages_for(inputs)``: a target's step depends on that target's runtime only. ``context``
    holds the run's settings (seed, threads), of which ``p.keyed_context`` enter the key."""
    input_keys = {port: [h.key for h in v] if isinstance(v, list) else v.key for port, v in sorted(inputs.items())}
    payload = {
        "pass": p.name,
        "version": p.version,
        "config": p.config.model_dump(mode="json"),
        "inputs": input_keys,
        "fingerprint": fingerprint,
        "context": {name: (context or {}).get(name) for name in p.keyed_context},
        "packages": package_versions(p.packages_for(inputs)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def swap_in_folder(tmp: Path, final: Path) -> Path:
    """Replace ``final`` with the finished ``tmp`` folder (a reader never sees half of either)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    return final


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def entry(self, pass_name: str, key: str) -> Path:
        return self.root / pass_name / key

    def lookup(self, pass_name: str, key: str) -> Handle | None:
        """The finished handle for ``key``, or None; an entry whose files have vanished counts as missing."""
        record = self.entry(pass_name, key) / "handle.json"
        if not record.is_file():
            return None
        data = json.loads(record.read_text())
        handle = HANDLE_KINDS[data.pop("kind")].model_validate(data).with_paths(lambda p: self.root / p)  # no-op on absolute paths
        return handle if all(p.exists() for p in handle.paths()) else None

    @contextlib.contextmanager
    def claim(self, pass_name: str, key: str) -> Iterator[None]:
        """Hold the entry's lock while producing it: two runs sharing a cache (parallel jobs, a bench beside a run)
        would otherwise write the same partial folder; the second waits, then finds the entry made."""
        # locks live apart from the entries, so a pass's folder holds only finished entries and partial ones
        lock = self.root / ".locks" / f"{pass_name}-{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting: another run is producing %s/%s", pass_name, key)
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield  # the lock file stays: removing it would let a third run lock a different inode

    def work_dir(self, pass_name: str, key: str) -> Path:
        work = self.entry(pass_name, key).with_name(f"{key}.partial")
        work.mkdir(parents=True, exist_ok=True)
        return work

    def commit(self, pass_name: str, key: str, handle: Handle, work: Path) -> Handle:
        """Move a finished pass's folder into place and return the handle pointing into it."""
        final = self.entry(pass_name, key)
        handle = handle.relocate(work, final).model_copy(update={"key": key})
        # paths into the cache are stored relative to its root, so a cache copied elsewhere (another folder, CI job or
        # node) still answers; paths outside it (an installed model, the user's data file) stay as they are
        stored = handle.with_paths(lambda p: p.relative_to(self.root) if p.is_relative_to(self.root) else p)
        write_json_atomic(work / "handle.json", {"kind": handle.kind, **stored.model_dump(mode="json")})
        if final.exists():  # a forced re-run replaces the old entry
            stale = final.with_name(f"{key}.stale{os.getpid()}")
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(work, final)
        return handle
