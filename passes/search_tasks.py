"""The search's units of parallel work, as plain module-level functions any executor can run (in-process or as
Ray tasks on another machine): they take handles and shipped folders, write only to a scratch folder of their
own, and return values; the search pass alone writes the evaluation store.

``build_and_score`` runs the real passes on one candidate — extract from the super-network, lower, quantize
with its policy, evaluate on the validation split on the target runtime — plus, if asked, the cheap estimate (the
extracted weights in PyTorch, the policy fake-quantized), and returns its metrics with the runtime files.
``time_latency`` times those files on the target, interleaved with the unpruned FP32 model; the search asks
for it only on nodes advertising the target, one at a time per node. ``time_latency_table`` builds, lowers, quantizes
and times the one-block models of the search's latency table (``pipeline/search/latency_table.py``) there too.
"""
from __future__ import annotations

import functools
import json
import logging
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tailorfit.pipeline.contract import PassContext
from tailorfit.pipeline.models.data import chunks, encode_rows, read_split
from tailorfit.pipeline.executor import Shipped
from tailorfit.pipeline.scratch import scratch_dir
from tailorfit.pipeline.search.fake_quant import simulated_policy
from tailorfit.pipeline.search.genome import Candidate
from tailorfit.pipeline.search.latency_table import GROUPS, BlockShapes, BlockSpec, TimedBlocks
from tailorfit.pipeline.models.handles import Dataset, HFModel, Lowered, SuperNet
from tailorfit.pipeline.models.loading import ARCHITECTURE, family_of, input_names, load_preprocessor, load_torch_model
from tailorfit.targets import get_target
from tailorfit.targets.base import read_linear_map
from tailorfit.targets.timing import measure_interleaved

from .benchmark import synthetic_inputs
from .evaluate import Evaluate, EvaluateConfig
from .extract import Extract, ExtractConfig
from .lower import Lower, LowerConfig
from .quantize import Quantize, QuantizeConfig

_log = logging.getLogger("tailorfit.search.candidate")
_log.setLevel(logging.WARNING)  # the inner passes' info lines would drown the search's own


@dataclass(frozen=True)
class TaskSettings:
    """What every task of one search shares besides the shipped folders."""

    target: str
    sequence_length: int
    calibration_samples: int
    latency_runs: int
    seed: int
    threads: int
    estimate: bool


@dataclass(frozen=True)
class BuiltCandidate:
    """A measured candidate's metrics and its runtime files, which the latency task unpacks wherever it runs."""

    candidate: str
    metrics: dict[str, Any]
    seconds: float
    lowered: Lowered  # paths under ``root``
    root: Path
    files: dict[str, bytes]  # path relative to ``root`` -> content


@dataclass(frozen=True)
class Timed:
    metrics: dict[str, float]
    seconds: float


def local_supernet(supernet: SuperNet, folder: Shipped) -> SuperNet:
    here = folder.local()
    # the super-network folder holds the tokenizer too: the source model's own folder need not travel
    return supernet.model_copy(update={"path": here, "source": supernet.source.model_copy(update={"path": here})})


def _stage(root: Path, candidate: str, stage: str, s: TaskSettings) -> PassContext:
    work = root / stage
    work.mkdir(parents=True)
    return PassContext(f"search:{candidate}", work, seed=s.seed, threads=s.threads, log=_log)


def build_and_score(candidate: Candidate, *, supernet: SuperNet, supernet_folder: Shipped, data: Dataset, data_folder: Shipped,
                    settings: TaskSettings) -> BuiltCandidate:
    s = settings
    torch.set_num_threads(s.threads)  # a Ray worker starts with one thread per CPU it was given
    supernet = local_supernet(supernet, supernet_folder)
    data = data.model_copy(update={"path": data_folder.local()})
    timings: dict[str, float] = {}
    with scratch_dir("candidate") as scratch:
        root = Path(scratch)
        timed = _stopwatch(timings)
        dense = timed("extract", lambda: Extract(ExtractConfig(subnet=candidate.subnet, seq_len=s.sequence_length, name=candidate.id))
                      .run(_stage(root, candidate.id, "extract", s), supernet=supernet))
        lowered: Lowered = timed("lower", lambda: Lower(LowerConfig(target=s.target)).run(_stage(root, candidate.id, "lower", s), model=dense))
        if candidate.quantized:
            quantize = Quantize(QuantizeConfig(policy=candidate.policy, calibration_samples=s.calibration_samples, max_length=s.sequence_length))
            lowered = timed("quantize", lambda: quantize.run(_stage(root, candidate.id, "quantize", s), model=lowered, data=data))
        architecture = json.loads((dense.path / ARCHITECTURE).read_text())
        metrics: dict[str, Any] = {
            "params": architecture["params"], "non_embedding_params": architecture["non_embedding_params"], "macs": architecture["macs"],
            "size_mb": lowered.size_bytes() / 2**20,
        }
        evaluate = Evaluate(EvaluateConfig(split="validation", max_length=s.sequence_length, bootstrap=100))
        evaluated = timed("evaluate", lambda: evaluate.run(_stage(root, candidate.id, "evaluate", s), model=lowered, data=data))
        with open(evaluated.reports["predictions"]) as f:
            metrics["correct"] = "".join(str(r["correct"]) for r in map(json.loads, f))
        metrics["accuracy"] = evaluated.metrics["accuracy"]
        if s.estimate:
            metrics["estimate_correct"] = timed("estimate", lambda: _estimate(dense, candidate, data, supernet.source, s.sequence_length))
            metrics["accuracy_estimate"] = metrics["estimate_correct"].count("1") / len(metrics["estimate_correct"])
        metrics["seconds_by_stage"] = {k: round(v, 3) for k, v in timings.items()}
        # what timing needs: the runtime files, and the config the synthetic inputs are shaped from
        needed = [*lowered.files, lowered.source.path / "config.json"]
        files = {str(p.relative_to(root)): p.read_bytes() for p in needed}
    return BuiltCandidate(candidate.id, metrics, sum(timings.values()), lowered, root, files)


def time_latency(built: BuiltCandidate, *, reference: Lowered, reference_folder: Shipped, settings: TaskSettings) -> Timed:
    """Median latency, and its ratio to the unpruned FP32 model timed interleaved with it: the ratio is what the
    search optimises, because on a shared machine medians of separate measurements drift by tens of percent."""
    s = settings
    t0 = time.perf_counter()
    torch.set_num_threads(s.threads)
    reference, reference_run = _reference_session(reference, reference_folder, s.threads)
    with scratch_dir("latency") as scratch:
        root = Path(scratch)
        for name, content in built.files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content)
        lowered = built.lowered.relocate(built.root, root)
        run = get_target(lowered.target).session(lowered.files, s.threads, lowered.inference_precision)
        rng = np.random.default_rng(s.seed)
        inputs = synthetic_inputs(lowered, s.sequence_length, rng)
        ref_inputs = synthetic_inputs(reference, s.sequence_length, rng)
        timed = measure_interleaved({"candidate": lambda: run(inputs), "reference": lambda: reference_run(ref_inputs)},
                                    warmup=5, rounds=s.latency_runs)
    metrics = {"latency_ms": timed.stats["candidate"].median_ms, "reference_latency_ms": timed.stats["reference"].median_ms,
               "latency_ratio": timed.ratio("candidate", "reference"), "latency_other_cpu_load": timed.stats["candidate"].other_cpu_load}
    return Timed(metrics, time.perf_counter() - t0)


def time_latency_table(specs: list[BlockSpec], *, shapes: BlockShapes, reference: Lowered, reference_folder: Shipped,
                       settings: TaskSettings) -> TimedBlocks:
    """Each spec's one-block model lowered by the target (and quantized by it where int8), then all of them timed
    interleaved with the largest layer as one model and the unpruned FP32 one, so the table's entries, the cost of a
    call and the fixed part share one machine state. One lowering per block shape; each precision pair quantizes it."""
    s = settings
    t0 = time.perf_counter()
    torch.set_num_threads(s.threads)
    reference, reference_run = _reference_session(reference, reference_folder, s.threads)
    target = get_target(reference.target)
    rng = np.random.default_rng(s.seed)
    x = {_HIDDEN: rng.standard_normal((1, shapes.sequence_length, shapes.hidden), dtype=np.float32)}
    # values do not change a block's latency; a few rows are what the quantizer needs to place its scales
    calibration = [{_HIDDEN: rng.standard_normal(x[_HIDDEN].shape, dtype=np.float32)} for _ in range(min(s.calibration_samples, 8))]
    runs, read_back = {}, []
    with scratch_dir("latency-table") as scratch:
        root, lowered = Path(scratch), {}
        for i, spec in enumerate(specs):
            if (spec.block, spec.width) not in lowered:
                lowered[spec.block, spec.width] = _lower_block(_BLOCKS[spec.block](shapes, spec.width), shapes, root / f"{spec.block}-{spec.width}", target)
            files = lowered[spec.block, spec.width]
            if spec.quantized:
                groups = _node_groups(spec.block, files)
                keep = sorted(node for node, group in groups.items() if spec.precisions[group] == "fp32")
                (root / f"q{i}").mkdir()
                files = target.quantize(files, keep, calibration, len(calibration), root / f"q{i}")
            read_back.append(_group_precisions(spec.block, files, target.runtime_precisions(files, s.threads, reference.inference_precision)))
            runs[str(i)] = functools.partial(target.session(files, s.threads, reference.inference_precision), x)
        layer = nn.Sequential(_Attention(shapes, max(spec.width for spec in specs if spec.block == "attention")),
                              _FFN(shapes, max(spec.width for spec in specs if spec.block == "ffn")))
        runs["layer"] = functools.partial(target.session(_lower_block(layer, shapes, root / "layer", target), s.threads, reference.inference_precision), x)
        ref_inputs = synthetic_inputs(reference, s.sequence_length, rng)
        runs["reference"] = lambda: reference_run(ref_inputs)
        timed = measure_interleaved(runs, warmup=5, rounds=s.latency_runs)
    return TimedBlocks(median_ms=[timed.stats[str(i)].median_ms for i in range(len(specs))], runtime_precisions=read_back,
                       largest_layer_ms=timed.stats["layer"].median_ms, reference_ms=timed.stats["reference"].median_ms, seconds=time.perf_counter() - t0)


_HIDDEN = "hidden_states"


class _Attention(nn.Module):
    """An attention block as the family computes it: Q, K, V (separate or fused), SDPA, output projection, residual, norm."""

    def __init__(self, shapes: BlockShapes, heads: int):
        super().__init__()
        d, self.heads, self.kv, self.repeat = shapes.head_dim, heads, heads // shapes.group_size, shapes.group_size
        self.widths = [heads * d, self.kv * d, self.kv * d]
        self.qkv = nn.ModuleList([nn.Linear(shapes.hidden, w) for w in self.widths] if shapes.qkv_linears == 3 else [nn.Linear(shapes.hidden, sum(self.widths))])
        self.attn_out = nn.Linear(heads * d, shapes.hidden)
        self.norm = nn.LayerNorm(shapes.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        parts = [linear(x) for linear in self.qkv]
        q, k, v = parts if len(parts) == 3 else parts[0].split(self.widths, -1)
        q = q.view(b, t, self.heads, -1).transpose(1, 2)
        k, v = (y.view(b, t, self.kv, -1).transpose(1, 2).repeat_interleave(self.repeat, 1) for y in (k, v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        return self.norm(x + self.attn_out(a))


class _FFN(nn.Module):
    """An FFN block: up projection (gated when the family's is), activation, down projection, residual, norm."""

    def __init__(self, shapes: BlockShapes, width: int):
        super().__init__()
        self.ffn_up = nn.ModuleList([nn.Linear(shapes.hidden, width) for _ in range(shapes.up_linears)])
        self.ffn_down = nn.Linear(width, shapes.hidden)
        self.norm = nn.LayerNorm(shapes.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = [linear(x) for linear in self.ffn_up]
        h = F.gelu(up[0]) if len(up) == 1 else F.silu(up[0]) * up[1]
        return self.norm(x + self.ffn_down(h))


_BLOCKS = {"attention": _Attention, "ffn": _FFN}


class _Lowerable(nn.Module):
    """The signature targets lower: positional tensors in, the model (with a config) under ``.model``."""

    def __init__(self, block: nn.Module, sequence_length: int):
        super().__init__()
        self.model = block
        block.config = types.SimpleNamespace(max_position_embeddings=sequence_length)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(tensors[0])


def _lower_block(block: nn.Module, shapes: BlockShapes, out: Path, target: Any) -> list[Path]:
    out.mkdir()
    # batch 2: torch.export specialises a dimension of size 1
    example = torch.randn(2, shapes.sequence_length, shapes.hidden, generator=torch.Generator().manual_seed(0))
    return target.lower(_Lowerable(block.eval(), shapes.sequence_length), (example,), [_HIDDEN], out)


def _node_groups(block: str, files: list[Path]) -> dict[str, str]:
    """Runtime node -> the linear group it belongs to; attention products follow qkv, as in a full model's policy."""
    groups = {}
    for node, module in read_linear_map(files).items():
        name = module.split(".")[0]
        if name in GROUPS[block]:
            groups[node] = name
        elif block == "attention":
            groups[node] = "qkv"
    return groups


def _group_precisions(block: str, files: list[Path], runtime: dict[str, str]) -> dict[str, str]:
    """Group -> the precision its linears run in (``mixed`` if they disagree), as the runtime reports it."""
    mapped, out = read_linear_map(files), {}
    for group in GROUPS[block]:
        found = {runtime[node] for node, module in mapped.items() if module.split(".")[0] == group and node in runtime}
        out[group] = found.pop() if len(found) == 1 else ("mixed" if found else "unattributed")
    return out


def _reference_session(reference: Lowered, folder: Shipped, threads: int) -> tuple[Lowered, Callable]:
    """The unpruned FP32 model, loaded once per process and kept: every candidate is timed beside it."""
    return _loaded(reference.relocate(folder.origin, folder.local()).model_dump_json(), threads)


@functools.lru_cache(maxsize=1)
def _loaded(reference_json: str, threads: int) -> tuple[Lowered, Callable]:
    reference = Lowered.model_validate_json(reference_json)
    return reference, get_target(reference.target).session(reference.files, threads, reference.inference_precision)


def _estimate(dense: HFModel, candidate: Candidate, data: Dataset, source: HFModel, max_length: int) -> str:
    """Per-example correctness of the extracted PyTorch weights with the policy fake-quantized."""
    model = load_torch_model(dense).eval()
    names = input_names(model, dense)
    resolved = candidate.policy.resolve(len(candidate.subnet.kept()))
    preprocessor = load_preprocessor(source)
    out = []
    with torch.inference_mode(), simulated_policy(model, family_of(source), resolved):
        for part in chunks(read_split(data, "validation"), 32):
            batch = {k: torch.from_numpy(v) for k, v in encode_rows(preprocessor, part, names, max_length).items()}
            pred = model(**batch).logits.argmax(-1)
            out += [str(int(p == r["label"])) for p, r in zip(pred.tolist(), part)]
    return "".join(out)


def _stopwatch(timings: dict[str, float]) -> Callable[[str, Callable[[], Any]], Any]:
    """``timed(stage, fn)`` runs fn and adds its seconds to ``timings[stage]``."""
    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        try:
            return fn()
        finally:
            timings[stage] = time.perf_counter() - t
    return timed
