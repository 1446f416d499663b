"""The base of every model a user writes in a recipe (the recipe itself, each pass's config): unknown fields are
errors, not silently ignored, and a YAML boolean is not a number."""
from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML 1.1 reads yes/no/on/off as booleans, and pydantic takes True for 1: `batch_size: yes` would train at 1
        if isinstance(value, bool) and info.field_name and _number_not_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"{str(value).lower()} is not a number (YAML reads yes/no/on/off as booleans)")
        return value


def _number_not_bool(annotation: Any) -> bool:
    kinds = set(_leaves(annotation))
    return bool(kinds & {int, float}) and bool not in kinds


def _leaves(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    return [annotation] if not args else [leaf for arg in args for leaf in _leaves(arg)]
