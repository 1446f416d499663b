"""Where the machinery finds passes and targets: Python entry points, so the core imports neither.

``pyproject.toml`` declares the built-in ones (group ``tailorfit.passes``: a module whose import registers its
passes; group ``tailorfit.targets``: a ``{name: Target class}`` mapping); another installed package can add its
own passes or targets the same way, without touching tailorfit.
"""
from __future__ import annotations

from functools import cache
from importlib import metadata
from typing import Any

from tailorfit.pipeline.errors import TailorfitError


def _load(group: str) -> list[Any]:
    found = sorted(metadata.entry_points(group=group), key=lambda ep: (ep.name != "builtin", ep.name))
    if not found:
        raise TailorfitError(f"no '{group}' entry points are installed", "install tailorfit with `make setup` (pip install -e .)")
    return [ep.load() for ep in found]


@cache
def load_passes() -> None:
    """Import every module that registers passes (``Pass.__init_subclass__`` fills the registry)."""
    _load("tailorfit.passes")


@cache
def targets() -> dict[str, Any]:
    """Every installed target class by name."""
    out: dict[str, Any] = {}
    for mapping in _load("tailorfit.targets"):
        out.update(mapping)
    return out
