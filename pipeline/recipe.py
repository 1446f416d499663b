"""Recipes: the YAML (or dict) description of a pipeline, validated with pydantic."""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from tailorfit.pipeline.config_model import ConfigModel
from tailorfit.pipeline.errors import TailorfitError

DEFAULT_RECIPE = Path(__file__).with_name("default_recipe.yaml")


class Step(ConfigModel):
    """One node of the pipeline: a pass, its config, and (optionally) which steps feed its ports.

    Without ``inputs`` a port is wired automatically: a single-handle port to the nearest
    earlier step producing that kind, a list port to the last handle of every branch of that kind.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str = ""
    pass_name: str = Field(alias="pass")
    config: dict[str, Any] = {}
    inputs: dict[str, str | list[str]] = {}

    @model_validator(mode="after")
    def _default_id(self) -> "Step":
        if not self.id:
            self.id = self.pass_name
        return self


class Recipe(ConfigModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="seeds every random choice: splits, training, sampling")
    threads: int | None = Field(default=None, ge=1, description="CPU threads for training and inference (default: all cores)")
    executor: str | None = Field(default=None, description="local, ray or ray://HOST:PORT (default: ray when $RAY_ADDRESS is set, else local); --executor overrides it")
    steps: list[Step] = Field(min_length=1)


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "(top level)"
    return f"{where}: {e['msg']}"


def load_recipe(source: str | Path | dict[str, Any] | None) -> tuple[Recipe, dict[str, Any]]:
    """The parsed recipe and its raw form (kept verbatim in the manifest). ``None`` is the embedded default."""
    if source is None:
        source = DEFAULT_RECIPE
    if isinstance(source, dict):
        raw = source
    else:
        raw = _read_yaml(Path(source))
    if not isinstance(raw, dict):
        raise TailorfitError("a recipe must be a mapping with 'name' and 'steps'", "see recipes/default.yaml for the shape")
    try:
        return Recipe.model_validate(raw), raw
    except ValidationError as err:
        raise TailorfitError(f"malformed recipe: {_first_error(err)}", "see recipes/default.yaml for the shape") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys without a word; in a recipe that silently drops a setting."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader's own construct_mapping refuses it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key '{key}' appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> Any:
    if path.is_dir():
        raise TailorfitError(f"recipe '{path}' is a folder", "give the path of a YAML recipe file in it, or no recipe for the default")
    if not path.is_file():
        raise TailorfitError(f"recipe file '{path}' does not exist", "give the path of a YAML recipe, or no recipe for the default")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TailorfitError(f"recipe '{path}' is not a text file (it is not UTF-8)", "give a YAML recipe such as recipes/default.yaml") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        problem = f": {exc.problem}" if getattr(exc, "problem", None) else ""
        raise TailorfitError(f"recipe '{path}' is not valid YAML{at}{problem}", "fix the YAML") from None
