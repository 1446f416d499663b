"""Writing a report folder (``report.md``, ``report.json``, the sections' plots) and the README's results section,
which is generated from the latest full report between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from tailorfit.pipeline.cache import swap_in_folder, write_json_atomic
from tailorfit.pipeline.host import lacks_native

from .sections import Section

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
QUICK_SUFFIX = "-quick"  # quick reports sit beside full ones and never feed the README: their numbers are not results


def write_report(partial: Path, final: Path, meta: dict[str, Any], sections: dict[str, Section]) -> Path:
    """Write report.md and report.json into ``partial`` (which already holds the plots) and swap it in as ``final``."""
    body = [f"# tailorfit bench, {meta['date']}{' (quick: a smoke test, not results)' if meta['quick'] else ''}", "", _header(meta)]
    for number, section in enumerate(sections.values(), 1):
        body += ["", f"## {number}. {section.title}", "", section.markdown]
    (partial / "report.md").write_text("\n".join(body) + "\n")
    payload = {
        "meta": meta,
        "sections": {name: {"title": s.title, "markdown": s.markdown, "readme": s.readme, "plots": [p.name for p in s.plots], "data": s.data}
                     for name, s in sections.items()},
    }
    write_json_atomic(partial / "report.json", payload)
    return swap_in_folder(partial, final)


def _header(meta: dict[str, Any]) -> str:
    host = meta["host"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["packages"].items() if v != "not installed")
    return (
        f"`{meta['command']}` — recipe `{meta['recipe']}` (run folder `{meta['run_dir']}`), {meta['seconds']:.0f} s.  \n"
        f"Host: {host['cpu']}, {host['logical_cores']} logical cores ({', '.join(host['isa'])}), {meta['threads']} threads, "
        f"Python {host['python']}, {host['platform']}.  \nVersions: {versions}."
        + "".join(f"  \n**Caveat:** {c}." for c in _caveats(host))
    )


def _caveats(host: dict[str, Any]) -> list[str]:
    """The bench times INT8 (and bf16 where the CPU has it) everywhere, so it says when the CPU lacks INT8 instructions."""
    return [c for c in [lacks_native("int8", host)] if c]


def latest_report(root: Path) -> Path | None:
    """The newest full (not quick) report.json under the bench folder; dated folder names sort by date."""
    found = sorted(p for p in root.glob("*/report.json") if re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.parent.name))
    return found[-1] if found else None


README_SECTIONS = ("artifacts",)  # the README shows the headline table; the other sections stay in the report


def readme_section(report: dict[str, Any], report_path: str) -> str:
    """The README's short results text: when, where, the headline table, and where the rest is."""
    meta = report["meta"]
    host = meta["host"]
    lines = [
        f"### Latest results, {meta['date']} (`{meta['command']}`)",
        f"{host['cpu']}, {host['logical_cores']} logical cores ({', '.join(host['isa'])}), {meta['threads']} threads, batch 1.",
        *[f"**Caveat:** {c}." for c in _caveats(host)],
    ]
    for name in README_SECTIONS:
        if name in report["sections"]:
            section = report["sections"][name]
            lines += ["", section["readme"] or section["markdown"]]
    others = ", ".join(s["title"] for n, s in report["sections"].items() if n not in README_SECTIONS)
    lines += ["", f"Full report{f' ({others})' if others else ''}: [`{report_path}`]({report_path}); older results: [docs/results/](docs/results/README.md)."]
    return "\n".join(lines)


def update_readme(readme: Path, report_json: Path) -> bool:
    """Rewrite what lies between the bench markers from ``report_json``; False (README untouched) without markers."""
    text = readme.read_text()
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        return False
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    try:
        shown = report_json.resolve().relative_to(readme.resolve().parent)
    except ValueError:
        shown = report_json
    section = readme_section(json.loads(report_json.read_text()), str(shown.parent / "report.md"))
    tmp = readme.with_name(f".{readme.name}.tmp{os.getpid()}")
    tmp.write_text(text[:start] + "\n" + section + "\n" + text[end:])
    os.replace(tmp, readme)
    return True
