"""dataset: rows from CSV / JSONL / parquet files or a saved Hugging Face dataset, split into train / validation / test.

Consumes: nothing. Produces: ``Dataset`` — JSONL splits whose rows keep their source row index as
``id`` (so two models can be compared on the same examples), and ``meta.json`` recording the split.
The split is seeded and, for classification, stratified.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from tailorfit.pipeline.contract import Facts, Pass, PassConfig, PassContext, PortFacts
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.models.handles import Dataset, Task
from tailorfit.pipeline.locations import content_hash, resolve_location

SPLITS = ("train", "validation", "test")


class DatasetConfig(PassConfig):
    path: str = Field(description="a .csv/.jsonl/.parquet file, a saved HF dataset folder, or pkg://PACKAGE/relative/path")
    task: Task = "text-classification"
    text_column: str = "text"
    label_column: str | None = Field(default="label", description="class column (classification tasks); ignored for causal-lm")
    image_column: str = Field(default="image", description="image-classification: nested pixel lists or file paths relative to the data file")
    where: dict[str, str | int] = Field(default={}, description="keep only rows whose columns equal these values")
    fractions: tuple[float, float, float] = Field(default=(0.8, 0.1, 0.1), description="train, validation, test")
    max_rows: int | None = Field(default=None, ge=10, description="stratified subsample before splitting (quick runs)")

    @model_validator(mode="after")
    def _fractions(self) -> "DatasetConfig":
        if abs(sum(self.fractions) - 1) > 1e-6 or min(self.fractions) <= 0:
            raise ValueError("fractions must be three positive numbers summing to 1")
        return self


def read_rows(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        import pyarrow as pa

        arrow_files = sorted(path.rglob("*.arrow"))
        if not arrow_files:
            raise TailorfitError(f"folder '{path}' holds no .arrow files", "give a folder written by datasets' save_to_disk, or a data file")
        rows: list[dict[str, Any]] = []
        for f in arrow_files:
            with pa.memory_map(str(f)) as src:
                rows += pa.ipc.open_stream(src).read_all().to_pylist()
        return rows
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise TailorfitError(f"cannot read '{path.name}'", "use a .csv, .jsonl or .parquet file, or a saved Hugging Face dataset folder")


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
        c = self.config
        if c.task == "causal-lm":
            return {"text": c.text_column}
        source = c.image_column if c.task == "image-classification" else c.text_column
        return {"image" if c.task == "image-classification" else "text": source, "label": c.label_column or "label"}

    def run(self, ctx: PassContext) -> Dataset:
        c = self.config
        path = self._path()
        rows = read_rows(path)
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
        label_names: list[str] = []
        if "label" in columns:
            label_names = sorted({str(r["label"]) for r in records}, key=_label_order)
            if len(label_names) < 2:
                raise TailorfitError(f"the label column '{columns['label']}' has one class only ({label_names[0]!r})", "a classifier needs at least two classes: check the data or 'where'")
            index = {name: i for i, name in enumerate(label_names)}
            for r in records:
                r["label"] = index[str(r["label"])]
        if c.task == "image-classification":
            for r in records:
                if isinstance(r["image"], str):
                    r["image"] = str((path.parent / r["image"]).resolve())
        splits = self._split(records, ctx.seed, stratify="label" in columns)
        out = ctx.work_dir
        for split, part in splits.items():
            with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for r in part:
                    f.write(json.dumps(r) + "\n")
        sizes = {s: len(p) for s, p in splits.items()}
        meta = {
            "source": str(path), "rows": len(records), "sizes": sizes, "seed": ctx.seed, "fractions": list(c.fractions),
            "stratified": "label" in columns, "label_names": label_names,
            "split_ids_sha256": {s: hashlib.sha256(json.dumps([r["id"] for r in p]).encode()).hexdigest()[:16] for s, p in splits.items()},
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=2))
        ctx.log.info("%d rows -> %s", len(records), sizes)
        return Dataset(path=out, task=c.task, label_names=label_names, sizes=sizes)

    def _split(self, records: list[dict[str, Any]], seed: int, stratify: bool) -> dict[str, list[dict[str, Any]]]:
        from sklearn.model_selection import train_test_split

        def cut(rows: list[dict[str, Any]], size: float | int) -> tuple[list, list]:
            labels = [r["label"] for r in rows] if stratify else None
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

