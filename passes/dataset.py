"""dataset: rows from CSV / JSONL / parquet files or a saved Hugging Face dataset, split into train / validation / test.

Consumes: nothing. Produces: ``Dataset`` — JSONL splits whose rows keep their source row index as
``id`` (so two models can be compared on the same examples), and ``meta.json`` recording the split.
The split is seeded and stratified: by class for classification, by label quintile for text-regression (whose
labels are floats and whose meta records their mean, spread and range).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from tailorfit.pipeline.contract import Facts, Pass, PassConfig, PassContext, PortFacts
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.models.data_files import read_rows
from tailorfit.pipeline.models.handles import Dataset, Task
from tailorfit.pipeline.locations import content_hash, resolve_location

SPLITS = ("train", "validation", "test")
MIN_EVALUATION_ROWS = 10  # below this an accuracy moves in steps of 10 points or more: no measurement to pick a model on


class DatasetConfig(PassConfig):
    path: str = Field(description="a .csv/.jsonl/.parquet file, a saved HF dataset folder, or pkg://PACKAGE/relative/path")
    task: Task = "text-classification"
    text_column: str | list[str] = Field(default="text", description="the text column, or two for text pairs (NLI, paraphrase): [premise, hypothesis]")
    label_column: str | None = Field(default="label", description="class column (classification), number column (text-regression); ignored for causal-lm")
    image_column: str = Field(default="image", description="image-classification: nested pixel lists or file paths relative to the data file")
    where: dict[str, str | int] = Field(default={}, description="keep only rows whose columns equal these values")
    fractions: tuple[float, float, float] = Field(default=(0.8, 0.1, 0.1), description="train, validation, test")
    max_rows: int | None = Field(default=None, ge=10, description="stratified subsample before splitting (quick runs)")
    encoding: str = Field(default="utf-8", description="text encoding of a CSV / JSONL file (utf-8 also reads Excel's BOM)")

    @model_validator(mode="after")
    def _fractions(self) -> "DatasetConfig":
        if abs(sum(self.fractions) - 1) > 1e-6 or min(self.fractions) <= 0:
            raise ValueError("fractions must be three positive numbers summing to 1")
        if isinstance(self.text_column, list) and (len(self.text_column) not in (1, 2) or self.task not in ("text-classification", "text-regression")):
            raise ValueError("text_column takes one column, or two (a text pair) for text-classification and text-regression")
        return self


class DatasetPass(Pass):
    name = "dataset"
    Config = DatasetConfig
    packages = ("scikit-learn", "pyarrow")

    def _path(self) -> Path:
        path = resolve_location(self.config.path)
        if not path.exists():
            raise TailorfitError(f"dataset path '{self.config.path}' does not exist", "give a data file, a saved dataset folder, or pkg://PACKAGE/path")
        return path

    def requires(self, inputs: PortFacts) -> None:
        self._path()

    def ensures(self, inputs: PortFacts) -> Facts:
        return {"task": self.config.task}

    def fingerprint(self) -> str:
        return content_hash(self._path())

    def _columns(self) -> dict[str, str]:
        """Record field -> the data's column: ``text`` (and ``text_pair`` for pairs) or ``image``, and ``label``."""
        c = self.config
        texts = [c.text_column] if isinstance(c.text_column, str) else c.text_column
        if c.task == "causal-lm":
            return {"text": texts[0]}
        if c.task == "image-classification":
            return {"image": c.image_column, "label": c.label_column or "label"}
        return {**dict(zip(("text", "text_pair"), texts)), "label": c.label_column or "label"}

    def run(self, ctx: PassContext) -> Dataset:
        c = self.config
        path = self._path()
        rows = read_rows(path, c.encoding)
        for col, value in c.where.items():
            if rows and col not in rows[0]:
                raise TailorfitError(f"'where' names column '{col}', which the data lacks (columns: {', '.join(rows[0])})", "fix the column name")
            rows = [r for r in rows if str(r[col]) == str(value)]
        if not rows:
            raise TailorfitError(f"no rows in '{path.name}' after filtering", "check 'where' and the file")
        columns = self._columns()
        for col in columns.values():
            if col not in rows[0]:
                raise TailorfitError(f"the data has no column '{col}' (columns: {', '.join(rows[0])})", "set text_column / label_column / image_column in the dataset step")
        records = [{"id": i, **{k: r[v] for k, v in columns.items()}} for i, r in enumerate(rows)]
        _check_rows(records, columns)
        label_names: list[str] = []
        if c.task == "text-regression":
            _numeric_labels(records, columns["label"])
        elif "label" in columns:
            for r in records:
                r["label"] = _label_name(r["label"])
            label_names = sorted({r["label"] for r in records}, key=_label_order)
            if len(label_names) < 2:
                raise TailorfitError(f"the label column '{columns['label']}' has one class only ({label_names[0]!r})", "a classifier needs at least two classes: check the data or 'where'")
            index = {name: i for i, name in enumerate(label_names)}
            for r in records:
                r["label"] = index[r["label"]]
        if c.task == "image-classification":
            for r in records:
                if isinstance(r["image"], str):
                    r["image"] = str((path.parent / r["image"]).resolve())
        strata = _strata(records, c.task) if "label" in columns else None
        splits = self._split(records, ctx.seed, strata)
        for split in ("validation", "test"):
            if len(splits[split]) < MIN_EVALUATION_ROWS:
                raise TailorfitError(f"the {split} split gets {len(splits[split])} of {len(records)} rows, too few to measure a model on",
                                     f"give at least {MIN_EVALUATION_ROWS} rows to each of validation and test (more data, or larger 'fractions' for them)")
        out = ctx.work_dir
        for split, part in splits.items():
            with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for r in part:
                    f.write(json.dumps(r) + "\n")
        sizes = {s: len(p) for s, p in splits.items()}
        meta = {
            "source": str(path), "rows": len(records), "sizes": sizes, "seed": ctx.seed, "fractions": list(c.fractions),
            "stratified": "by label quintile" if c.task == "text-regression" else "label" in columns, "label_names": label_names,
            **({"label_stats": _label_stats(records)} if c.task == "text-regression" else {}),
            "split_ids_sha256": {s: hashlib.sha256(json.dumps([r["id"] for r in p]).encode()).hexdigest()[:16] for s, p in splits.items()},
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=2))
        ctx.log.info("%d rows -> %s", len(records), sizes)
        return Dataset(path=out, task=c.task, label_names=label_names, sizes=sizes)

    def _split(self, records: list[dict[str, Any]], seed: int, strata: dict[int, int] | None) -> dict[str, list[dict[str, Any]]]:
        from sklearn.model_selection import train_test_split

        def cut(rows: list[dict[str, Any]], size: float | int) -> tuple[list, list]:
            labels = [strata[r["id"]] for r in rows] if strata else None
            try:
                return train_test_split(rows, test_size=size, random_state=seed, stratify=labels)
            except ValueError as exc:
                raise TailorfitError(f"cannot split {len(rows)} rows as asked ({exc})", "use more rows or different fractions") from None

        if self.config.max_rows and len(records) > self.config.max_rows:
            records, _ = cut(records, len(records) - self.config.max_rows)
        train_f, val_f, test_f = self.config.fractions
        rest, test = cut(records, test_f)
        train, val = cut(rest, val_f / (train_f + val_f))
        return {"train": sorted(train, key=_by_id), "validation": sorted(val, key=_by_id), "test": sorted(test, key=_by_id)}


def _by_id(r: dict[str, Any]) -> int:
    return r["id"]


def _label_order(name: str) -> tuple[int, Any]:
    try:
        return (0, float(name))
    except ValueError:
        return (1, name)


def _check_rows(records: list[dict[str, Any]], columns: dict[str, str]) -> None:
    """Refuse rows a model would silently learn nothing from (empty texts) or learn wrong (blank labels become a
    class of their own). Rows are counted from 1, as a user finds them in the file."""
    checks = [("label", "a blank label", "fill in or drop those rows")]
    if "label" in columns:  # a classifier's texts; a causal LM's empty lines add no tokens
        checks += [(key, "an empty text", "drop those rows, or filter them out with 'where'") for key in ("text", "text_pair")]
    for key, what, fix in checks:
        if key not in columns:
            continue
        bad = [r["id"] + 1 for r in records if r[key] is None or not str(r[key]).strip()]
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (" …" if len(bad) > 5 else "")
            raise TailorfitError(f"{len(bad)} rows have {what} in column '{columns[key]}' (rows {shown})", fix)


def _numeric_labels(records: list[dict[str, Any]], column: str) -> None:
    """A regression target as a float per row; text, NaN or infinity is refused with the rows it is in."""
    bad = []
    for r in records:
        try:
            r["label"] = float(str(r["label"]).strip())
        except ValueError:
            r["label"] = math.nan
        if not math.isfinite(r["label"]):
            bad.append(r["id"] + 1)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" …" if len(bad) > 5 else "")
        raise TailorfitError(f"{len(bad)} rows have a label in column '{column}' that is not a finite number (rows {shown})",
                             "a text-regression target is a number per row: fix or drop those rows, or use task: text-classification for classes")
    if len({r["label"] for r in records}) < 2:
        raise TailorfitError(f"the label column '{column}' holds one value only ({records[0]['label']})", "a regression needs targets that vary: check the data or 'where'")


def _strata(records: list[dict[str, Any]], task: str) -> dict[int, Any]:
    """Row id -> what the split keeps in proportion: the class, or for a regression the label's quintile."""
    if task != "text-regression":
        return {r["id"]: r["label"] for r in records}
    labels = np.array([r["label"] for r in records])
    edges = np.unique(np.quantile(labels, [0.2, 0.4, 0.6, 0.8]))
    return {r["id"]: int(np.searchsorted(edges, r["label"])) for r in records}


def _label_stats(records: list[dict[str, Any]]) -> dict[str, float]:
    labels = np.array([r["label"] for r in records])
    return {"mean": float(labels.mean()), "std": float(labels.std()), "min": float(labels.min()), "max": float(labels.max())}


def _label_name(value: Any) -> str:
    """One name per class, however the file writes it: 1, 1.0 and "1" are one class; "pos" stays "pos"."""
    name = str(value).strip()
    try:
        number = float(name)
    except ValueError:
        return name
    return str(int(number)) if number.is_integer() else name
