"""Reading the rows of a data file as users have them: CSV with any common delimiter, with or without Excel's BOM, in
a stated encoding; JSONL (or a JSON array); parquet; a saved Hugging Face dataset folder. Every way a file can be
unreadable ends in one line naming the file and, where it helps, the line."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tailorfit.pipeline.errors import TailorfitError

_DELIMITERS = ",;\t|"


def read_rows(path: Path, encoding: str = "utf-8") -> list[dict[str, Any]]:
    if path.is_dir():
        return _arrow_rows(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path, encoding)
    if suffix in (".jsonl", ".json"):
        return _json_rows(path, encoding)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several kinds for a file that is not parquet
            raise TailorfitError(f"'{path.name}' is not a readable parquet file ({str(exc).splitlines()[0][:120]})", "re-export it, or give CSV / JSONL") from None
    raise TailorfitError(f"cannot read '{path.name}'", "use a .csv, .jsonl or .parquet file, or a saved Hugging Face dataset folder")


def _arrow_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa

    arrow_files = sorted(path.rglob("*.arrow"))
    if not arrow_files:
        raise TailorfitError(f"folder '{path}' holds no .arrow files", "give a folder written by datasets' save_to_disk, or a data file")
    rows: list[dict[str, Any]] = []
    for f in arrow_files:
        with pa.memory_map(str(f)) as src:
            rows += pa.ipc.open_stream(src).read_all().to_pylist()
    return rows


def _text(path: Path, encoding: str) -> str:
    # utf-8-sig reads plain UTF-8 too, and drops the BOM Excel writes (else it sticks to the first column's name)
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = path.read_text(encoding=codec)
    except LookupError:
        raise TailorfitError(f"unknown encoding '{encoding}'", "use a Python codec name such as utf-8, latin-1 or cp1252") from None
    except UnicodeDecodeError as exc:
        raise TailorfitError(f"'{path.name}' is not {encoding} text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
                             "re-save it as UTF-8, or give its encoding in the dataset step (encoding: latin-1)") from None
    if "\x00" in text:
        raise TailorfitError(f"'{path.name}' holds NUL bytes, so it is a binary file, not text", "export the data as CSV, JSONL or parquet")
    return text


def _csv_rows(path: Path, encoding: str) -> list[dict[str, Any]]:
    text = _text(path, encoding)
    header = text.split("\n", 1)[0]
    # the header names the columns, so the delimiter that splits it most is the file's (a semicolon CSV from a
    # European Excel would otherwise read as one column whose name is the whole header)
    delimiter = max(_DELIMITERS, key=lambda d: len(next(csv.reader([header], delimiter=d), [])))
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))


def _json_rows(path: Path, encoding: str) -> list[dict[str, Any]]:
    text = _text(path, encoding)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):  # one JSON array of objects
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TailorfitError(f"'{path.name}' is not valid JSON (line {exc.lineno}: {exc.msg})", "fix the file, or write one JSON object per line (JSONL)") from None
        return [_object(row, f"item {i}", path) for i, row in enumerate(rows, 1)]
    rows = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TailorfitError(f"line {number} of '{path.name}' is not JSON ({exc.msg})", "fix that line: each line must be one JSON object") from None
        rows.append(_object(row, f"line {number}", path))
    return rows


def _object(row: Any, where: str, path: Path) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise TailorfitError(f"{where} of '{path.name}' is a JSON {type(row).__name__}, not an object", 'make each row an object such as {"text": "...", "label": "..."}')
    return row
