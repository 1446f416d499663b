"""Section 3, distance to the limit: this CPU's matrix-product throughput (one 1024x1024x1024 product on OpenVINO, with
the artifacts' thread count) in f32, bf16 and int8, and each artifact's achieved throughput (2 x MACs / median latency)
as a percentage of the ceiling of the precision its products run in."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .context import BenchContext
from .measure import macs
from .sections import Section

TITLE = "Distance to the limit"
N = 1024
CEILING = "matmul ceiling "  # prefix of the ceilings' names in the shared latency measurement
# what OpenVINO's runtime graph must report for the product, per ceiling: a ceiling not run in its precision is no ceiling
_EXECUTED = {"f32": {"f32"}, "bf16": {"bf16"}, "int8": {"i8", "u8"}}


def matmul_ceilings(threads: int, seed: int = 0) -> tuple[dict[str, Callable[[], Any]], dict[str, list[str]]]:
    """One N x N x N product (activations x constant weights, as in a linear layer) per precision, compiled for the
    artifacts' thread count: ``({CEILING + precision: run}, {precision: what OpenVINO reports executing})``. int8 is the
    f32 model quantized by NNCF (OpenVINO then runs the product on int8 kernels). The caller times them in the same
    interleaved rounds as the artifacts, so a percentage of the ceiling compares times taken in the same machine state."""
    import nncf
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(seed)
    x = ops.parameter([N, N], np.float32, name="x")
    weights = ops.constant(rng.standard_normal((N, N)).astype(np.float32))
    f32 = ov.Model([ops.matmul(x, weights, False, True)], [x], "matmul")
    inputs = [rng.standard_normal((N, N)).astype(np.float32) for _ in range(4)]
    int8 = nncf.quantize(f32, nncf.Dataset(inputs), subset_size=len(inputs))
    core = ov.Core()
    runs, executed = {}, {}
    for name, model, hint in (("f32", f32, "f32"), ("bf16", f32, "bf16"), ("int8", int8, "f32")):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY"})
        executed[name] = sorted({
            op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
            if op.get_rt_info()["layerType"].astype(str) in ("FullyConnected", "MatMul")
        })
        if not set(executed[name]) & _EXECUTED[name]:
            if name == "bf16":  # a CPU without bf16 units runs it in f32: no bf16 ceiling, bf16 entries are held to f32
                del executed[name]
                continue
            raise RuntimeError(f"OpenVINO ran the {name} matmul ceiling in {executed[name]}: not a {name} ceiling")
        request = compiled.create_infer_request()
        runs[CEILING + name] = lambda request=request: request.infer({0: inputs[0]})
    return runs, executed


def ceiling_for(precision: str, inference_precision: str) -> str:
    """The ceiling an artifact is held to: int8 for INT8 (and mixed) models, else the precision float ops run in."""
    return "int8" if precision in ("int8", "mixed") else "bf16" if inference_precision == "bf16" else "f32"


def run(ctx: BenchContext) -> Section:
    lengths = ctx.settings.lengths
    ceilings = {}
    for name, executed in ctx.ceilings_executed.items():
        per = {n: ctx.latency[n].stats[CEILING + name].as_dict() for n in lengths}
        ceilings[name] = {"executed": executed, "per_length_rounds": per, "gops": 2 * N**3 / (per[lengths[0]]["median_ms"] / 1e3) / 1e9}
    rows = []
    for e in ctx.entries:
        which = ceiling_for(e.model.precision, e.model.inference_precision)
        which = which if which in ceilings else "f32"
        row: dict[str, Any] = {"entry": e.name, "target": e.model.target, "ceiling": which, "per_length": {}}
        for n in lengths:
            timed, work = ctx.latency[n], macs(e.model.source, n)
            row["per_length"][n] = {
                "gmacs": work / 1e9, "achieved_gops": 2 * work / (timed.stats[e.name].median_ms / 1e3) / 1e9,
                # per round: (2 MACs / t_entry) / (2 N^3 / t_ceiling), median over the rounds they shared
                "percent_of_ceiling": 100 * work / N**3 * timed.ratio(CEILING + which, e.name),
            }
        rows.append(row)
    plot = _plot(rows, ctx)
    table = _tables(ceilings, rows, ctx)
    markdown = "\n".join([
        f"Ceilings: one {N}x{N}x{N} matrix product (activations times constant weights, like a linear layer) on OpenVINO CPU with "
        f"{ctx.threads} threads in f32, bf16 and int8 (the f32 product quantized by NNCF); `executed as` is what OpenVINO's compiled "
        "graph reports. They are timed in the same interleaved rounds as the artifacts (the rounds of the artifact table), so each "
        "percentage compares times taken in the same machine state: the median over rounds of (2 x MACs / entry time) / "
        f"(2 x {N}^3 / ceiling time), MACs from tailorfit's cost model. Each entry is held to the ceiling of the precision its products "
        "run in (int8 for INT8 and mixed models; torch-cpu INT8 too, although eager PyTorch computes its products in float).",
        "", table, "", "![percent of ceiling](ceiling.png)",
    ])
    return Section(TITLE, markdown, {"matmul_size": N, "threads": ctx.threads, "ceilings": ceilings, "rows": rows}, [plot], readme=table)


def _tables(ceilings: dict[str, dict[str, Any]], rows: list[dict[str, Any]], ctx: BenchContext) -> str:
    lengths = ctx.settings.lengths
    lines = ["| ceiling | executed as | median ms (p90) | GOP/s |", "| --- | --- | --- | --- |"]
    for name, c in ceilings.items():
        first = c["per_length_rounds"][lengths[0]]
        lines.append(f"| {name} | {', '.join(c['executed'])} | {first['median_ms']:.2f} ({first['p90_ms']:.2f}) | {c['gops']:.0f} |")
    head = ["entry", "held to"] + [f"GOP/s @{n}" for n in lengths] + [f"% of ceiling @{n}" for n in lengths]
    lines += ["", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        per = [r["per_length"][n] for n in lengths]
        lines.append("| " + " | ".join([r["entry"], r["ceiling"], *[f"{p['achieved_gops']:.0f}" for p in per], *[f"{p['percent_of_ceiling']:.0f}%" for p in per]]) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], ctx: BenchContext):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = ctx.settings.lengths[0]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    names = [f"{r['entry']} ({r['ceiling']})" for r in rows]
    values = [r["per_length"][length]["percent_of_ceiling"] for r in rows]
    ax.barh(names, values, color=["tab:green" if r["ceiling"] == "int8" else "tab:gray" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"achieved matmul throughput, % of this CPU's ceiling in the same precision ({length} tokens)")
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    path = ctx.out_dir / "ceiling.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
