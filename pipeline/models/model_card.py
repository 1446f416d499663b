"""The README.md model card written beside every packaged candidate."""
from __future__ import annotations

from typing import Any

from tailorfit.pipeline.host import lacks_native

_LOAD = {
    "openvino-cpu": """```python
import openvino as ov
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(".")
model = ov.Core().compile_model("openvino/model.xml", "CPU", {{"INFERENCE_PRECISION_HINT": "{precision}"}})
logits = model(dict(tok(["a gripping, funny film"], return_tensors="np")))[0]
```""",
    "onnxruntime-cpu": """```python
import onnxruntime as ort
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(".")
sess = ort.InferenceSession("onnx/model.onnx", providers=["CPUExecutionProvider"])
names = {{i.name for i in sess.get_inputs()}}
logits = sess.run(None, {{k: v for k, v in tok(["a gripping, funny film"], return_tensors="np").items() if k in names}})[0]
```""",
    "torch-cpu": """```python
import json
import torch
import torch.ao.quantization.fx._decomposed  # registers the quantize/dequantize ops an INT8 program calls
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(".")
extra = {{"tailorfit.json": ""}}
model = torch.export.load("torch/model.pt2", extra_files=extra).module()
names = json.loads(extra["tailorfit.json"])["inputs"]  # the program takes these tensors, in this order
enc = tok(["a gripping, funny film"], return_tensors="pt")
with torch.inference_mode():
    logits = model(*(enc.get(n, torch.zeros_like(enc["input_ids"])) for n in names))
```""",
}
_LOAD["torch-inductor-cpu"] = _LOAD["torch-cpu"].replace('"torch/model.pt2"', '"torch-inductor/model.pt2"').replace(
    "names = json", "torch._inductor.config.freezing = True  # prepacks INT8 weights for oneDNN kernels\nmodel = torch.compile(model)\nnames = json").replace(
    "with torch.inference_mode():", "with torch.no_grad():  # Inductor's frozen graphs reject inference tensors")


def _fmt_ci(value: float, ci: list[float] | None, scale: float = 100, unit: str = "%") -> str:
    if ci is None:
        return f"{value * scale:.2f}{unit}"
    return f"{value * scale:.2f}{unit} (95% CI {ci[0] * scale:.2f}–{ci[1] * scale:.2f})"


def _quality(m: dict[str, Any]) -> str:
    if "accuracy" in m:
        return _fmt_ci(m["accuracy"], m.get("accuracy_ci95"))
    if "perplexity" in m:
        return f"perplexity {_fmt_ci(m['perplexity'], m.get('perplexity_ci95'), 1, '')}"
    if "pearson" in m:
        return f"Pearson {_fmt_ci(m['pearson'], m.get('pearson_ci95'), 1, '')}, Spearman {_fmt_ci(m['spearman'], m.get('spearman_ci95'), 1, '')}"
    return "not evaluated"


def _caveats(entry: dict[str, Any], host: dict[str, Any]) -> list[str]:
    """What the CPU's missing instructions mean for the precisions this candidate's rows are measured in."""
    computed = {m["precision"] for m in entry["targets"].values()} | {m["inference_precision"] for m in entry["targets"].values()}
    wanted = {"int8"} if computed & {"int8", "mixed"} else set()
    return [c for p in sorted(wanted | ({"bf16"} & computed)) if (c := lacks_native(p, host))]


def model_card(entry: dict[str, Any], manifest: dict[str, Any]) -> str:
    host = entry["host"]
    lines = [
        f"# {entry['candidate']}",
        "",
        f"A {entry['family'] or 'Hugging Face'} model for **{entry['task']}**, derived from `{entry['model']}` by tailorfit "
        f"(recipe `{manifest.get('recipe_name', '?')}`), with one folder per deployment target.",
        *[f"**Note:** {n}" for n in entry.get("notes", [])],
        "",
        "## Measured on the target",
        f"Measured {entry['measured']} on {host['cpu']} ({host['logical_cores']} logical cores; {', '.join(host['isa']) or 'no AVX2'}).",
        *[f"**Caveat:** {c}." for c in _caveats(entry, host)],
        "Every number below comes from the runtime that serves the files in the same row.",
        "",
        "| target | weights | inference precision | quality | latency median / p90 (ms) | size (MB) | vs the unpruned model |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for target, m in entry["targets"].items():
        lat = "; ".join(
            f"seq {k}: {v['median_ms']:.2f} / {v['p90_ms']:.2f} ({v['threads']} thr{', BUSY' if v['busy'] else ''})" for k, v in m.get("latency", {}).items()
        ) or "not measured"
        versus = []
        for name, v in m.get("versus", {}).items():
            parts = [f"size x{v['size_ratio']:.2f}"]
            if "latency_ratio" in v:
                parts.append("latency " + ", ".join(f"x{r:.2f} (seq {k})" for k, r in v["latency_ratio"].items()))
            if "accuracy_change" in v:
                d = v["accuracy_change"]
                parts.append(f"accuracy {d['difference'] * 100:+.2f} pts (95% CI {d['ci_low'] * 100:+.2f}–{d['ci_high'] * 100:+.2f}, paired, n={d['n']})")
            if "pearson_change" in v:
                d = v["pearson_change"]
                parts.append(f"Pearson {d['difference']:+.4f} (95% CI {d['ci_low']:+.4f}–{d['ci_high']:+.4f}, paired, n={d['n']})")
            versus.append(f"vs unpruned {name.upper()}: " + "; ".join(parts))
        lines.append(f"| {target} | {m['precision']} | {m['inference_precision']} | {_quality(m)} | {lat} | {m['size_mb']:.1f} | {'<br>'.join(versus) or '—'} |")
    selection = entry.get("selection")
    if selection:
        sm = selection["search_metrics"]
        kept = [c for c in selection["subnet"]["layers"] if c["keep"]]
        lines += ["", "## Found by search", "",
                  f"Picked by `{selection['rule']}` as search candidate `{selection['candidate']}`: {len(kept)} of {len(selection['subnet']['layers'])} layers, "
                  f"heads {'/'.join(str(c['heads']) for c in kept)}, FFN {'/'.join(str(c['ffn']) for c in kept)}.",
                  f"At search time ({sm['split']} split, {sm['target']}): accuracy {sm['accuracy'] * 100:.2f}%"
                  + (f" (cheap PyTorch estimate {sm['accuracy_estimate'] * 100:.2f}%)" if "accuracy_estimate" in sm else "")
                  + f", latency {sm['latency_ms']:.2f} ms (x{sm['latency_ratio']:.2f} of the unpruned FP32 model, timed interleaved), {sm['size_mb']:.1f} MB; the table above is measured afresh on the test split."]
    distilled = entry.get("distillation")
    if distilled:
        scale, unit = (100, "%") if distilled["measure"].startswith("accuracy") else (1, "")
        lines += ["", f"Distilled from `{distilled['teacher']}` for {distilled['steps']} steps ({'logits and hidden states' if distilled['hidden_states'] else 'logits'}): "
                  f"{distilled['split']} {distilled['measure']} {distilled['before'] * scale:.2f}{unit} before, {distilled['after'] * scale:.2f}{unit} after."]
    chosen = next((m for m in entry["targets"].values() if m.get("finalists")), None)
    if chosen:
        lines += ["", f"Chosen as the {chosen['chosen_by']}, among {len(chosen['finalists'])} finalists ({chosen['finalists'][0]['split']} split, "
                  "paired vs the unpruned FP32 model): " + "; ".join(
                      f"`{f['candidate']}` {f['accuracy'] * 100:.2f}% ({f['accuracy_change']['difference'] * 100:+.2f} pts), latency x{f['latency_ratio']:.2f}" for f in chosen["finalists"]) + "."]
    lines += ["", "## How it was made", "", "The steps this candidate came from, in order, with their configs:", ""]
    steps = manifest.get("steps", {})
    lineage = _ancestors(steps, {m["step"] for m in entry["targets"].values() if "step" in m})
    for sid in manifest.get("order", []):
        if sid in lineage:
            cfg = {k: v for k, v in steps[sid]["config"].items() if v not in (None, {}, [])}
            lines.append(f"- `{sid}` ({steps[sid]['pass']}): `{cfg}`")
    policies = {t: m["policy"] for t, m in entry["targets"].items() if m.get("policy")}
    if policies:
        lines += ["", "Precision policy (layer.group → precision; `head` = linears outside the layers), verified against the runtime's own per-op precisions:", ""]
        for t, p in policies.items():
            fp32 = [k for k, v in p.items() if v == "fp32"]
            lines.append(f"- {t}: int8 everywhere except: {', '.join(fp32) or 'nothing'}")
    lines += ["", "## How to run it", ""]
    for target, m in entry["targets"].items():
        if target in _LOAD:
            lines += [f"With {m['runtime']}:", "", _LOAD[target].format(precision=m["inference_precision"]), ""]
    lines += ["`metrics.json` holds every number above and more; the run's `manifest.json` (two folders up) records versions, configs and cache keys."]
    return "\n".join(lines) + "\n"


def _ancestors(steps: dict[str, Any], finals: set[str]) -> set[str]:
    seen, todo = set(), list(finals)
    while todo:
        sid = todo.pop()
        if sid in seen or sid not in steps or "skipped" in steps[sid]:  # a skipped input gave the candidate nothing
            continue
        seen.add(sid)
        todo += [up for ups in steps[sid].get("inputs", {}).values() for up in ups]
    return seen
