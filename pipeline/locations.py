"""Where inputs live: local paths, ``pkg://PACKAGE/relative/path`` files shipped inside installed packages, content
hashes, and reading a JSON object from one of them."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

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


def read_json_object(path: Path, fix: str, unreadable: str = "is not valid JSON") -> dict[str, Any]:
    """The JSON object in ``path``; a file that is not JSON (``unreadable`` says what that means for it), or holds
    something else, is one line saying so and ``fix``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TailorfitError(f"'{path}' {unreadable} ({str(exc).splitlines()[0][:120]})", fix) from None
    if not isinstance(data, dict):
        raise TailorfitError(f"'{path}' holds a JSON {type(data).__name__}, not an object", fix)
    return data
