"""``python -m bench.versus RUN_DIR STEP [--macs-at N]``: every finished ``evaluate`` step of a run as a markdown table
beside one of them (e.g. the unpruned FP32 model on the test split): kept layers, heads, FFN widths, params, MACs,
accuracy with its 95% bootstrap CI, and the paired change on the rows both were measured on, with its interval —
what tells a real drop from noise when sub-networks are compared (the super-network study's table). Causal-LM steps
show perplexity, and their change is the paired perplexity ratio on the windows both were measured on."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tailorfit.pipeline import read_run  # noqa: E402
from tailorfit.pipeline.cache import Cache  # noqa: E402
from tailorfit.pipeline.errors import TailorfitError  # noqa: E402
from tailorfit.pipeline.models.handles import Lowered  # noqa: E402
from tailorfit.pipeline.search.stats import format_change, paired_change, paired_perplexity_ratio  # noqa: E402

from .measure import macs, params, subnet  # noqa: E402


def evaluated_steps(run_dir: Path) -> tuple[dict[str, Any], dict[str, Lowered]]:
    """The run's manifest and the handles of its finished evaluate steps, in recipe order, read back from its cache."""
    manifest, _ = read_run(run_dir)
    cache, found = Cache(Path(manifest["cache"])), {}
    for sid in manifest["order"]:
        step = manifest["steps"].get(sid, {})
        if step.get("pass") == "evaluate" and "key" in step and "skipped" not in step:
            handle = cache.lookup("evaluate", step["key"])
            if handle is not None and "predictions" in handle.reports:
                found[sid] = handle
    return manifest, found


def versus_table(run_dir: Path, reference: str, macs_at: int = 128) -> str:
    manifest, evaluated = evaluated_steps(run_dir)
    if reference not in evaluated:
        raise TailorfitError(f"'{reference}' is not a finished evaluate step of {run_dir}", f"use one of: {', '.join(evaluated) or '(none finished)'}")
    base, seed = evaluated[reference].reports["predictions"], manifest.get("seed", 0)
    lm = "perplexity" in evaluated[reference].metrics
    head = ["step", "kept layers", "heads", "FFN", "params M", f"GMACs @{macs_at}", "split", *(
        ("perplexity (95% CI)", f"x {reference}'s perplexity, paired (95% CI)") if lm else ("accuracy (95% CI)", f"vs {reference}, pts (95% CI)"))]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for sid, m in evaluated.items():
        if ("perplexity" if lm else "accuracy") not in m.metrics:
            continue
        if lm:
            low, high = m.metrics["perplexity_ci95"]
            value = f"{m.metrics['perplexity']:.1f} ({low:.1f}–{high:.1f})"
            r = None if sid == reference else paired_perplexity_ratio(m.reports["predictions"], base, seed=seed)
            change = "—" if r is None else f"x{r['ratio']:.3f} ({r['ci_low']:.3f}…{r['ci_high']:.3f})"
        else:
            low, high = m.metrics["accuracy_ci95"]
            value = f"{100 * m.metrics['accuracy']:.2f}% ({100 * low:.1f}–{100 * high:.1f})"
            change = "—" if sid == reference else format_change(paired_change(m.reports["predictions"], base, seed=seed))
        layers = subnet(m.source).layers
        kept = [c for c in layers if c.keep]
        cells = [sid, ",".join(str(i) for i, c in enumerate(layers) if c.keep), _widths(c.heads for c in kept), _widths(c.ffn for c in kept),
                 f"{params(m.source) / 1e6:.2f}", f"{macs(m.source, macs_at) / 1e9:.3f}", m.metrics.get("split", "?"), value, change]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _widths(values: Any) -> str:
    values = list(values)
    return str(values[0]) if len(set(values)) == 1 else "/".join(map(str, values))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run folder: OUT/<recipe name>")
    p.add_argument("reference", help="the evaluate step every other is compared with (same split)")
    p.add_argument("--macs-at", type=int, default=128, help="sequence length the MACs are counted at")
    args = p.parse_args(argv)
    try:
        print(versus_table(args.run_dir, args.reference, args.macs_at))
    except TailorfitError as err:
        print(f"python -m bench.versus: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
