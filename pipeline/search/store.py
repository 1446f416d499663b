"""The evaluation store: every measured search candidate, persisted in SQLite as soon as it is measured.

One row per candidate (canonical genome, decoded sub-network and policy, every metric, timings), committed
one at a time, so a run killed at any moment loses at most the candidate in flight. The store records the
genome layout it was written for and what its measurements are of (the super-network, the data, the target and
the settings that change a measurement); opening it with another layout or for other measurements is refused
rather than mixing spaces or answering a search with another model's numbers. What else was measured under the
same conditions (the search's latency table) is attached to it, so searches sharing a store time it once.
"""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator

from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.search.genome import Candidate

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, role TEXT NOT NULL, genome TEXT NOT NULL,
    subnet TEXT NOT NULL, policy TEXT NOT NULL, metrics TEXT NOT NULL, seconds REAL NOT NULL, measured_at TEXT NOT NULL
);
"""


class EvaluationStore:
    """``role`` tells search candidates from the baselines measured beside them."""

    def __init__(self, path: Path, layout: str | None, measured: dict[str, Any] | None = None):
        """``layout`` None opens an existing store read-only, whatever wrote it (for reports). ``measured``: what
        the measurements are of; a store holding candidates without that record cannot be trusted with it."""
        self.path = Path(path)
        if layout is None:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            return
        self._db = sqlite3.connect(self.path)
        self._db.executescript(_SCHEMA)
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if meta.get("layout", layout) != layout:
            self._refuse(f"was written for another search space (layout {meta['layout']}, this search {layout})",
                         "point 'store' at a store from the same super-network and precisions, or remove it to start afresh")
        if measured is not None:
            if "measured" in meta:
                stored = json.loads(meta["measured"])
                differ = [f"{k} {stored.get(k)} vs {v}" for k, v in measured.items() if stored.get(k) != v]
                if differ:
                    self._refuse(f"holds measurements of something else ({'; '.join(differ)})",
                                 "point 'store' at a store this super-network, dataset and target wrote, or remove it to start afresh")
            elif len(self):
                self._refuse("holds candidates but no record of which super-network and settings they were measured with (an older store)",
                             "remove it to start afresh")
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('layout', ?)", (layout,))
            if measured is not None:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('measured', ?)", (json.dumps(measured, sort_keys=True),))

    def _refuse(self, why: str, fix: str) -> None:
        self._db.close()
        raise TailorfitError(f"the evaluation store {self.path} {why}", fix)

    def attachment(self, name: str) -> Any | None:
        """A JSON value stored beside the candidates under ``name`` (None: none), measured like them."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"attachment:{name}",)).fetchone()
        return json.loads(row[0]) if row else None

    def attach(self, name: str, value: Any) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"attachment:{name}", json.dumps(value)))

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
