"""Where inputs live: local paths, ``pkg://PACKAGE/relative/path`` files shipped inside installed packages, and content hashes."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from tailorfit.pipeline.errors import TailorfitError

PKG_SCHEME = "pkg://"


def resolve_location(location: str) -> Path:
    """A local path for ``location``; ``pkg://`` is resolved without importing the package (some run code on import)."""
    if not location.startswith(PKG_SCHEME):
        return Path(location).expanduser().resolve()
    package, _, rel = location[len(PKG_SCHEME):].partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TailorfitError(f"package '{package}' in '{location}' is not installed", f"pip install the distribution that provides '{package}'")
    return (Path(list(spec.submodule_search_locations)[0]) / rel).resolve()


def content_hash(path: Path) -> str:
    """sha256 over a file, or over every file of a folder (relative names and bytes), so edits invalidate caches."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]
