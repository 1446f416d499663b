"""Summaries of a run directory (finished, failed, running or interrupted): what ``tailorfit inspect`` prints."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.locations import read_json_object
from tailorfit.pipeline.run_status import effective_status


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise TailorfitError(f"'{run_dir}' has no manifest.json, so it is not a tailorfit run directory", "give a folder like artifacts/<recipe name>")
    manifest = effective_status(_json(manifest_path), run_dir)
    metrics_path = run_dir / "metrics.json"
    metrics = _json(metrics_path) if metrics_path.is_file() else {}
    return manifest, metrics


def _json(path: Path) -> dict[str, Any]:
    """A run file tailorfit wrote atomically; one that does not parse, or lacks a manifest's keys, was damaged since."""
    fix = "re-run the recipe into this folder: its cached steps are kept"
    data = read_json_object(path, fix, unreadable="is damaged: not valid JSON")
    if path.name == "manifest.json" and not {"recipe_name", "steps", "order"} <= set(data):
        raise TailorfitError(f"'{path}' is damaged: it is not a tailorfit run record", fix)
    return data


def metrics_table(metrics: dict[str, Any]) -> Table:
    table = Table(title="candidates (measured on each target)")
    for col in ("candidate", "target", "weights", "infer", "quality", "95% CI", "latency median ms", "p90", "size MB", "x FP32 latency"):
        table.add_column(col)
    for cand, entry in metrics.items():
        for target, m in entry["targets"].items():
            if "accuracy" in m:
                quality, ci = f"{m['accuracy'] * 100:.2f}%", "{:.1f}–{:.1f}".format(*(x * 100 for x in m["accuracy_ci95"]))
            elif "perplexity" in m:
                quality, ci = f"ppl {m['perplexity']:.2f}", "{:.2f}–{:.2f}".format(*m["perplexity_ci95"])
            else:
                quality, ci = "—", "—"
            lat = m.get("latency", {})
            med = " / ".join(f"{v['median_ms']:.2f}@{k}" for k, v in lat.items()) or "—"
            p90 = " / ".join(f"{v['p90_ms']:.2f}" for v in lat.values()) or "—"
            ratio = " / ".join(f"{v:.2f}" for v in m.get("versus", {}).get("fp32", {}).get("latency_ratio", {}).values()) or "—"
            table.add_row(cand, target, m["precision"], m["inference_precision"], quality, ci, med, p90, f"{m['size_mb']:.1f}", ratio)
    return table


def wide_console(stderr: bool = False) -> Console:
    """A console that does not wrap tables at 80 columns when writing to a file or pipe."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 200)


def print_run(run_dir: str | Path, console: Console | None = None) -> None:
    console = console or wide_console()
    manifest, metrics = read_run(run_dir)
    hits = sum(1 for s in manifest["steps"].values() if s.get("cache_hit"))
    console.print(
        f"[bold]{manifest['recipe_name']}[/bold]: {manifest['status']}"
        f"{' after step ' + str(manifest['last_finished_step']) if manifest['status'] == 'interrupted' else ''}, started {manifest['started']}, "
        f"{manifest.get('seconds', '?')} s, {len(manifest['steps'])} steps ({hits} from cache), "
        f"{manifest['threads']} threads on {manifest['host']['cpu']} ({', '.join(manifest['host']['isa']) or 'no AVX2'})"
    )
    for caveat in manifest.get("caveats", []):
        console.print(f"[yellow]caveat:[/yellow] {caveat}", markup=True, highlight=False)
    steps = Table(title="steps")
    for col in ("step", "pass", "cache", "seconds", "key"):
        steps.add_column(col)
    for sid in manifest["order"]:
        s = manifest["steps"].get(sid)
        if s:
            state = f"skipped: {s['skipped']}" if "skipped" in s else "hit" if s["cache_hit"] else "run"
            steps.add_row(sid, s["pass"], state, f"{s.get('seconds', 0):.1f}", s.get("key", "—"))
    console.print(steps)
    if metrics:
        console.print(metrics_table(metrics))
    for folder in sorted(Path(run_dir, "search").glob("*/history.json")):
        console.print(search_table(folder.parent))


def search_table(folder: Path) -> Table:
    """A search's Pareto front (validation split, measured on the target) with its hypervolume and estimate quality."""
    history = json.loads((folder / "history.json").read_text())
    agreement = history.get("estimate_vs_target", {})
    tau = agreement.get("kendall_tau")
    table = Table(title=f"search '{folder.name}': {history['algorithm']}, {history.get('measured', '?')} candidates measured, "
                        f"hypervolume {history['hypervolume']:.4f}, estimate-vs-target Kendall tau {'—' if tau is None else f'{tau:.2f}'}")
    for col in ("candidate", "role", "layers", "heads", "FFN", "int8 groups", "val. accuracy", "vs FP32 pts (95% CI)", "estimate", "x FP32 latency", "latency ms", "size MB"):
        table.add_column(col)
    for r in json.loads((folder / "pareto.json").read_text()):
        m, kept = r["metrics"], [c for c in r["subnet"]["layers"] if c["keep"]]
        d = m["accuracy_change_vs_fp32"]
        table.add_row(
            r["id"], r["role"], str(len(kept)), "/".join(str(c["heads"]) for c in kept), "/".join(str(c["ffn"]) for c in kept),
            f"{sum(v == 'int8' for v in r['policy']['layers'].values())}/{len(r['policy']['layers'])}", f"{100 * m['accuracy']:.2f}%",
            f"{100 * d['difference']:+.2f} ({100 * d['ci_low']:+.2f}…{100 * d['ci_high']:+.2f})", f"{100 * m['accuracy_estimate']:.2f}%" if "accuracy_estimate" in m else "—",
            f"{m['latency_ratio']:.2f}", f"{m['latency_ms']:.2f}", f"{m['size_mb']:.1f}",
        )
    return table
