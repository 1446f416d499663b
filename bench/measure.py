"""Per-artifact measurements besides accuracy and latency: analytic params / MACs, and peak memory of a fresh
process that loads the artifact and runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tailorfit.pipeline.supernet.cost import CostModel
from tailorfit.pipeline.supernet.elastic import ElasticModel
from tailorfit.pipeline.families import family_by_name
from tailorfit.pipeline.models.handles import HFModel, Lowered
from tailorfit.pipeline.models.loading import ARCHITECTURE, auto_class
from tailorfit.pipeline.supernet.space import SearchSpace, SubnetConfig, default_space

_COSTS: dict[str, tuple[CostModel, SubnetConfig]] = {}


def _cost(source: HFModel) -> tuple[CostModel, SubnetConfig]:
    """tailorfit's analytic cost model of the model's (sub-)network: a sub-network folder names its base config, search
    space and sub-network in architecture.json; an unpruned model is its own space's largest sub-network."""
    if source.key not in _COSTS:
        from transformers import AutoConfig

        arch_path = source.path / ARCHITECTURE
        if arch_path.is_file():
            arch = json.loads(arch_path.read_text())
            base = dict(arch["base_config"])
            config = AutoConfig.for_model(base.pop("model_type"), **base)
            space, subnet = SearchSpace.model_validate(arch["space"]), SubnetConfig.model_validate(arch["subnet"])
        else:
            config = AutoConfig.from_pretrained(source.path)
            space = default_space(config)
            subnet = space.largest()
        skeleton = auto_class(source.task).from_config(config)  # random weights: the cost model reads shapes only
        _COSTS[source.key] = (CostModel.measure(ElasticModel(skeleton, family_by_name(source.family), space)), subnet)
    return _COSTS[source.key]


def subnet(source: HFModel) -> SubnetConfig:
    """The layers, heads and FFN widths the model keeps of its super-network (all of them for an unpruned model)."""
    return _cost(source)[1]


def params(source: HFModel) -> int:
    cost, subnet = _cost(source)
    return cost.params(subnet)


def macs(source: HFModel, seq_len: int) -> int:
    """Multiply-accumulates of the linears and attention products for one sequence (embeddings are look-ups)."""
    cost, subnet = _cost(source)
    return cost.macs(subnet, seq_len)


def peak_memory_mb(model: Lowered | None, target: str, threads: int, length: int, runs: int) -> float:
    """Peak RSS of a fresh ``python -m bench.memory_probe`` that loads ``model`` on ``target`` and runs it ``runs`` times
    at batch 1 (``model=None``: the same process loading no model, to show what the interpreter and libraries take)."""
    spec = {"model": model.model_dump(mode="json") if model else None, "target": target, "threads": threads, "length": length, "runs": runs}
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory_probe", json.dumps(spec)], capture_output=True, text=True, check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed for {model.candidate if model else target}: {done.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def memory_table(models: dict[str, Lowered], threads: int, length: int, runs: int) -> dict[str, Any]:
    """``{"entries": {name: MB}, "no_model": {target: MB}}``: one fresh process per entry, one empty one per runtime."""
    entries = {name: peak_memory_mb(m, m.target, threads, length, runs) for name, m in models.items()}
    targets = sorted({m.target for m in models.values()})
    return {"entries": entries, "no_model": {t: peak_memory_mb(None, t, threads, length, runs) for t in targets}, "runs": runs, "sequence_length": length}


def openvino_matmuls(model: Lowered, threads: int) -> dict[str, int]:
    """How many matrix products (FullyConnected / MatMul nodes) OpenVINO's compiled graph executes in each precision:
    works for any IR, including one whose node names tailorfit's linear map does not know (optimum-intel's export)."""
    import openvino as ov

    compiled = ov.Core().compile_model(
        model.files[0], "CPU", {"INFERENCE_PRECISION_HINT": model.inference_precision, "INFERENCE_NUM_THREADS": str(threads)})
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("FullyConnected", "MatMul"):
            precision = info["runtimePrecision"].astype(str)
            counts[precision] = counts.get(precision, 0) + 1
    return counts
