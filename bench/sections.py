"""The section interface and registry: a section is a module with ``TITLE`` and ``run(ctx) -> Section``.

A new section is a module in bench/ plus one line in ``SECTIONS``; the order here
is the order in the report.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# name (used by --sections) -> module; imported only when selected, so a section's heavy imports cost nothing otherwise
SECTIONS: dict[str, str] = {
    "artifacts": "bench.artifact_quality",
    "search": "bench.search_efficiency",
    "ceiling": "bench.ceiling",
    "cost": "bench.stage_cost",
}


@dataclass
class Section:
    title: str
    markdown: str  # the section's body in report.md
    data: dict[str, Any]  # everything measured, for report.json
    plots: list[Path] = field(default_factory=list)  # files written into the report folder
    readme: str | None = None  # a shorter body for the README's results section (None: the whole markdown)


def run_section(name: str, ctx: Any) -> Section:
    if name not in SECTIONS:
        raise SystemExit(f"unknown section '{name}'; use some of: {', '.join(SECTIONS)}")
    return importlib.import_module(SECTIONS[name]).run(ctx)
