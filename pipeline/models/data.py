"""Turning dataset rows into the named numpy batches a lowered model takes."""
from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np

from tailorfit.pipeline.models.handles import Dataset


def read_split(handle: Dataset, split: str) -> list[dict[str, Any]]:
    with open(handle.path / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def chunks(rows: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def encode_rows(preprocessor: Any, rows: list[dict[str, Any]], names: list[str], max_length: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """A batch for a classifier: tokenised text or text pairs (padded to the longest row, or to ``pad_to``; a pair is
    cut from its longer side first) or processed images."""
    if "image" in rows[0]:
        images = [_image(r["image"]) for r in rows]
        return {"pixel_values": preprocessor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)}
    pairs = [r["text_pair"] for r in rows] if "text_pair" in rows[0] else None
    enc = preprocessor(
        [r["text"] for r in rows], pairs, padding="max_length" if pad_to else True, truncation="longest_first",
        max_length=pad_to or max_length, return_tensors="np",
    )
    return {n: enc[n].astype(np.int64) if n in enc else np.zeros_like(enc["input_ids"], dtype=np.int64) for n in names}


def _image(value: Any) -> np.ndarray:
    if isinstance(value, str):
        from PIL import Image

        return np.asarray(Image.open(value).convert("RGB"))
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return arr


def lm_windows(tokenizer: Any, rows: list[dict[str, Any]], window: int, max_windows: int | None = None) -> np.ndarray:
    """Non-overlapping windows of ``window`` tokens over the split's text, joined by the EOS token."""
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for r in rows:
        ids += tokenizer(r["text"], add_special_tokens=False)["input_ids"] + sep
        if max_windows and len(ids) >= window * max_windows:
            break
    n = len(ids) // window
    if max_windows:
        n = min(n, max_windows)
    return np.asarray(ids[: n * window], dtype=np.int64).reshape(n, window)


def lm_batch(windows: np.ndarray) -> dict[str, np.ndarray]:
    return {"input_ids": windows, "attention_mask": np.ones_like(windows)}
