"""The evaluation store: every measured search candidate, persisted in SQLite as soon as it is measured.

One row per candidate (canonical genome, decoded sub-network and policy, every metric, timings), committed
one at a time, so a run killed at any moment loses at most the candidate in flight. The store records the
genome layout it was written for; opening it with another layout is refused rather than mixing spaces.
"""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator

from .errors import TailorfitError
from .genome import Candidate

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, role TEXT NOT NULL, genome TEXT NOT NULL,
    subnet TEXT NOT NULL, policy TEXT NOT NULL, metrics TEXT NOT NULL, seconds REAL NOT NULL, measured_at TEXT NOT NULL
);
"""


class EvaluationStore:
    """``role`` tells search candidates from the baselines measured beside them."""

    def __init__(self, path: Path, layout: str | None):
        """``layout`` None opens an existing store read-only, whatever search space wrote it (for reports)."""
        self.path = Path(path)
        if layout is None:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            return
        self._db = sqlite3.connect(self.path)
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'layout'").fetchone()
        if row is None:
            with self._db:
                self._db.execute("INSERT INTO meta VALUES ('layout', ?)", (layout,))
        elif row[0] != layout:
            self._db.close()
            raise TailorfitError(
                f"the evaluation store {self.path} was written for another search space (layout {row[0]}, this search {layout})",
                "point 'store' at a store from the same super-network and precisions, or remove it to start afresh",
            )

    def get(self, candidate_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM candidates WHERE id = ?", (candidate_id,)).fetchone()
        return self._record(row) if row else None

    def add(self, candidate: Candidate, genome: list[int], metrics: dict[str, Any], seconds: float, role: str = "search") -> None:
        with self._db:  # one transaction per candidate
            position = self._db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
            self._db.execute(
                "INSERT INTO candidates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (candidate.id, position, role, json.dumps(genome), candidate.subnet.model_dump_json(), candidate.policy.model_dump_json(),
                 json.dumps(metrics), seconds, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")),
            )

    def records(self, role: str | None = None) -> Iterator[dict[str, Any]]:
        query = "SELECT * FROM candidates" + (" WHERE role = ?" if role else "") + " ORDER BY position"
        for row in self._db.execute(query, (role,) if role else ()):
            yield self._record(row)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _record(row: tuple) -> dict[str, Any]:
        cid, position, role, genome, subnet, policy, metrics, seconds, measured_at = row
        return {
            "id": cid, "position": position, "role": role, "genome": json.loads(genome), "subnet": json.loads(subnet),
            "policy": json.loads(policy), "metrics": json.loads(metrics), "seconds": seconds, "measured_at": measured_at,
        }
