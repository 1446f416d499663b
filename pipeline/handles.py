"""The base of every handle: a small typed value that flows between passes and points at files.

A handle points at files (in the cache or in a package's install folder), never at a live
object, so any pass can be re-run, cached, resumed or shipped elsewhere. ``key`` is the
cache key of the step that produced it: downstream keys are derived from it. The kinds of
handle the built-in passes exchange live with the domain (``pipeline/models/handles.py``);
each subclass registers itself in ``HANDLE_KINDS`` so the cache can read it back by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict

HANDLE_KINDS: dict[str, type["Handle"]] = {}


class Handle(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str]
    key: str = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.kind = cls.__name__

    @classmethod
    def __pydantic_init_subclass__(cls, **kw: Any) -> None:
        super().__pydantic_init_subclass__(**kw)
        HANDLE_KINDS[cls.kind] = cls

    def paths(self) -> Iterator[Path]:
        """Every path this handle holds, nested values included."""
        found: list[Path] = []
        map_paths(self.model_dump(), lambda p: found.append(p) or p)
        return iter(found)

    def with_paths(self, change: Callable[[Path], Path]) -> "Handle":
        """The same handle with ``change`` applied to every path it holds."""
        return type(self).model_validate(map_paths(self.model_dump(), change))

    def measured(self) -> dict[str, dict[str, Any]]:
        """``{candidate: {target: metrics}}`` for the run's summary: what was measured on this handle, if anything."""
        return {}

    def relocate(self, old: Path, new: Path) -> "Handle":
        """The same handle with every path under ``old`` moved under ``new`` (a temp dir renamed into the cache)."""
        return self.with_paths(lambda p: new / p.relative_to(old) if p.is_relative_to(old) else p)


def map_paths(value: Any, change: Callable[[Path], Path]) -> Any:
    """``value`` (a handle's ``model_dump()``: dicts, lists, scalars) with ``change`` applied to every ``Path`` in it:
    the one walker over handle data, used to relocate, list and check what a handle points at."""
    if isinstance(value, Path):
        return change(value)
    if isinstance(value, dict):
        return {k: map_paths(v, change) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_paths(v, change) for v in value]
    return value
