"""Recipes: the YAML (or dict) description of a pipeline, validated with pydantic."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tailorfit.pipeline.errors import TailorfitError

DEFAULT_RECIPE = Path(__file__).with_name("default_recipe.yaml")


class Step(BaseModel):
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


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = 0
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
        path = Path(source)
        if not path.is_file():
            raise TailorfitError(f"recipe file '{path}' does not exist", "give the path of a YAML recipe, or no recipe for the default")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            at = f" at line {line + 1}" if line is not None else ""
            raise TailorfitError(f"recipe '{path}' is not valid YAML{at}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise TailorfitError("a recipe must be a mapping with 'name' and 'steps'", "see recipes/default.yaml for the shape")
    try:
        return Recipe.model_validate(raw), raw
    except ValidationError as err:
        raise TailorfitError(f"malformed recipe: {_first_error(err)}", "see recipes/default.yaml for the shape") from None
