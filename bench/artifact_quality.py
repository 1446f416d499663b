"""Section 1, artifact quality: every entry's test accuracy on its own runtime (95% CI, paired change vs the OpenVINO
FP32 model on the same rows), latency timed interleaved in one process (median, p90, per-round ratio to FP32), size on
disk, params, MACs and peak memory of a process serving it."""
from __future__ import annotations

from typing import Any

import numpy as np

from tailorfit.pipeline.families import family_by_name
from tailorfit.pipeline.search.stats import format_change, paired_change

from .context import REFERENCE, BenchContext, Entry
from .measure import macs, openvino_matmuls, params
from .sections import Section

TITLE = "Artifact quality"


def run(ctx: BenchContext) -> Section:
    rows = [_row(ctx, e) for e in ctx.entries]
    plot = _plot(rows, ctx)
    data = {"rows": rows, "memory": ctx.memory, "settings": vars(ctx.settings) | {"threads": ctx.threads, "batch": 1}}
    return Section(TITLE, _markdown(rows, ctx), data, [plot], readme=_table(rows, ctx))


def _row(ctx: BenchContext, e: Entry) -> dict[str, Any]:
    m, reference = e.model, next(x.model for x in ctx.entries if x.name == REFERENCE)
    latency = {}
    for length, timed in ctx.latency.items():
        stats = timed.stats[e.name]
        latency[length] = {**stats.as_dict(), "ratio_to_fp32": timed.ratio(e.name, REFERENCE)}
    row = {
        "entry": e.name, "origin": e.origin, "how": e.how, "candidate": m.candidate, "family": m.source.family, "target": m.target, "precision": m.precision,
        "inference_precision": m.inference_precision, "files": [str(f) for f in m.files],
        "accuracy": m.metrics["accuracy"], "accuracy_ci95": m.metrics["accuracy_ci95"], "examples": m.metrics["examples"],
        "versus_fp32": paired_change(m.reports["predictions"], reference.reports["predictions"], seed=ctx.run.seed),
        "latency": latency, "size_mb": m.size_bytes() / 2**20, "params": params(m.source),
        "macs": {length: macs(m.source, length) for length in ctx.settings.lengths}, "peak_rss_mb": ctx.memory["entries"][e.name],
        "int8_linears": m.metrics.get("int8_linears"), "fp32_linears": m.metrics.get("fp32_linears"), "fp32_modules": m.metrics.get("fp32_modules"),
    }
    if m.target == "openvino-cpu":
        row["openvino_matmuls"] = openvino_matmuls(m, ctx.threads)
    return row


def _by_group(modules: list[str], family_name: str) -> str:
    """Float linears as policy groups and layers ("qkv in layers 0, 1; attn_out in layer 3"), the way policies name them."""
    family = family_by_name(family_name)
    layers: dict[str, set[int]] = {}
    for module in modules:
        where = family.classify(module)
        group, layer = ("head", -1) if where is None else (where[1], where[0])
        layers.setdefault(group, set()).add(layer)
    return "; ".join(g if g == "head" else f"{g} in layer{'s' if len(ls) > 1 else ''} {', '.join(map(str, sorted(ls)))}" for g, ls in sorted(layers.items()))


def _table(rows: list[dict[str, Any]], ctx: BenchContext) -> str:
    lengths = ctx.settings.lengths
    head = ["entry", "runtime", "weights / compute", "test accuracy (95% CI)", "vs FP32, pts (95% CI)"]
    head += [f"ms @{n} median (p90)" for n in lengths] + [f"x FP32 @{n}" for n in lengths]
    head += ["size MB", "params M", f"GMACs @{lengths[0]}", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        lat = [r["latency"][n] for n in lengths]
        cells = [
            r["entry"], r["target"], f"{r['precision']} / {r['inference_precision']}",
            f"{100 * r['accuracy']:.2f}% ({100 * r['accuracy_ci95'][0]:.1f}–{100 * r['accuracy_ci95'][1]:.1f})",
            "—" if r["entry"] == REFERENCE else format_change(r["versus_fp32"]),
            *[f"{x['median_ms']:.2f} ({x['p90_ms']:.2f})" for x in lat], *[f"{x['ratio_to_fp32']:.3f}" for x in lat],
            f"{r['size_mb']:.1f}", f"{r['params'] / 1e6:.2f}", f"{r['macs'][lengths[0]] / 1e9:.2f}", f"{r['peak_rss_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(rows: list[dict[str, Any]], ctx: BenchContext) -> str:
    s, mem = ctx.settings, ctx.memory
    first = ctx.latency[s.lengths[0]].stats[REFERENCE]
    loads = ", ".join(f"{ctx.latency[n].stats[REFERENCE].other_cpu_load:.2f} cores at {n} tokens" for n in s.lengths)
    busy = [n for n in s.lengths if ctx.latency[n].stats[REFERENCE].busy]
    examples = rows[0]["examples"]
    parts = [
        f"Test split ({examples} rows, the same rows for every entry: changes are paired), accuracy measured on each entry's "
        f"own runtime, 95% bootstrap intervals. Latency: batch 1, {ctx.threads} threads, all {len(rows)} entries loaded in one "
        f"process and timed interleaved (each round in its own shuffled order), {first.runs} rounds after {first.warmup} warm-up runs each; `x FP32` is the median over "
        f"rounds of the entry's time over the FP32 model's time in the same round. Other CPU load while timing: {loads}"
        + (f" (above {s.max_other_load} cores in every attempt at {', '.join(map(str, busy))} tokens: flagged busy)." if busy else "."),
        f"Peak RSS: the whole process serving the entry (Python, numpy, torch — imported by tailorfit's target code —, the runtime, "
        f"the model, {mem['runs']} inferences at {mem['sequence_length']} tokens), nothing subtracted; the same process loading no model "
        "peaks at " + ", ".join(f"{v:.0f} MB ({t})" for t, v in mem["no_model"].items()) + ". Params and MACs: tailorfit's analytic "
        "cost model (linears and attention products; embeddings are look-ups). Size: the runtime files on disk.",
        "",
        _table(rows, ctx),
        "",
        "How each entry was made:",
        "",
    ]
    for r in rows:
        detail = r["how"]
        if r.get("int8_linears") is not None:
            detail += f"; int8 linears executed: {r['int8_linears']}/{r['int8_linears'] + r['fp32_linears']}"
        if r.get("fp32_modules"):
            detail += f" (float: {_by_group(r['fp32_modules'], r['family'])})"
        if "openvino_matmuls" in r:
            detail += "; OpenVINO runtime matrix products by precision: " + ", ".join(f"{k} {v}" for k, v in sorted(r["openvino_matmuls"].items()))
        parts.append(f"- **{r['entry']}**: {detail}.")
    parts += ["", "![accuracy vs latency](artifact_quality.png)"]
    return "\n".join(parts)


def _plot(rows: list[dict[str, Any]], ctx: BenchContext):
    """One row per entry, fastest first: latency ratio to OpenVINO FP32 (log axis) on the left, test accuracy with its
    95% CI on the right, so that no label sits on another even where several entries tie (the INT8 models at ~0.52)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    lengths = ctx.settings.lengths
    first, other = lengths[0], (lengths[1] if len(lengths) > 1 else None)
    order = sorted(rows, key=lambda r: r["latency"][first]["ratio_to_fp32"])
    colors = {"tailorfit": "tab:blue", "peer": "tab:orange"}
    markers = {"openvino-cpu": "o", "onnxruntime-cpu": "s", "torch-cpu": "^", "torch-inductor-cpu": "D"}
    y = np.arange(len(order))
    fig, (lat, acc) = plt.subplots(1, 2, sharey=True, figsize=(11, 0.42 * len(order) + 2.2), gridspec_kw={"width_ratios": [1.25, 1]})
    for i, r in zip(y, order):
        color, marker = colors.get(r["origin"], "tab:gray"), markers.get(r["target"], "o")
        ratio = r["latency"][first]["ratio_to_fp32"]
        shade = "0.94" if i % 2 == 0 else "white"  # banded rows; value labels sit on their row's colour
        box = {"fc": shade, "ec": "none", "pad": 0.5}
        for ax in (lat, acc):
            ax.axhspan(i - 0.5, i + 0.5, color=shade, zorder=0)
        if other is not None:
            lat.plot(r["latency"][other]["ratio_to_fp32"], i, marker=marker, mfc="white", mec=color, ms=7, ls="none", zorder=3)
        lat.plot(ratio, i, marker=marker, color=color, ms=8, ls="none", zorder=4)
        right = max(ratio, r["latency"][other]["ratio_to_fp32"] if other is not None else ratio)
        lat.annotate(f"{ratio:.2f}x", (right, i), textcoords="offset points", xytext=(10, -3), fontsize=8, color=color, bbox=box, zorder=5)
        a, (low, high) = 100 * r["accuracy"], (100 * v for v in r["accuracy_ci95"])
        acc.errorbar(a, i, xerr=[[a - low], [high - a]], fmt=marker, color=color, ms=7, capsize=3, zorder=4)
        acc.annotate(f"{a:.2f}%", (high, i), textcoords="offset points", xytext=(6, -3), fontsize=8, color=color, bbox=box, zorder=5)
    lat.set_xscale("log")
    ticks = [t for t in (0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10) if t <= 1.6 * max(r["latency"][first]["ratio_to_fp32"] for r in order)]
    lat.set_xticks(ticks, [f"{t:g}" for t in ticks])
    lat.set_xticks([], minor=True)
    lat.set_xlim(0.42, 1.6 * max(ticks))
    lat.axvline(1.0, color="0.4", ls="--", lw=1)
    lat.set_yticks(y, [r["entry"] for r in order], fontsize=9)
    for label, r in zip(lat.get_yticklabels(), order):
        label.set_color(colors.get(r["origin"], "tab:gray"))
        if r["entry"] == REFERENCE:
            label.set_fontweight("bold")
    lat.set_ylim(len(order) - 0.5, -0.5)
    lat.set_xlabel(f"latency / {REFERENCE}, log scale; labels: {first} tokens")
    reference = next((r for r in order if r["entry"] == REFERENCE), None)
    if reference is not None:
        acc.axvline(100 * reference["accuracy"], color="0.4", ls="--", lw=1)
    acc.set_xlabel("test accuracy, % (95% CI); dashed: FP32")
    acc.set_xlim(right=max(100 * r["accuracy_ci95"][1] for r in order) + 1.6)
    for ax in (lat, acc):
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="y", length=0)
    handles = [Line2D([], [], marker="o", color=c, ls="none", label=o if o != "peer" else "peers") for o, c in colors.items()]
    handles += [Line2D([], [], marker=m, color="0.3", ls="none", label=t) for t, m in markers.items() if any(r["target"] == t for r in order)]
    handles += [Line2D([], [], marker="o", color="0.3", ls="none", label=f"{first} tokens")]
    if other is not None:
        handles += [Line2D([], [], marker="o", mfc="white", mec="0.3", ls="none", label=f"{other} tokens")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Artifact quality: latency and test accuracy per entry, fastest first (tailorfit blue, peers orange)", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = ctx.out_dir / "artifact_quality.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
