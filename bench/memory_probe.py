"""One artifact's peak memory, in a process of its own: ``python -m bench.memory_probe '<json spec>'`` loads the model
with its target's session (as tailorfit's evaluate and benchmark passes do), runs it on synthetic batch-1 inputs and
prints ``{"peak_rss_mb": ...}``. The figure is the whole process (Python, numpy, torch, which tailorfit's target code
imports, the runtime, the model, the inferences); ``model: null`` measures the same process without a model."""
from __future__ import annotations

import importlib
import json
import sys

import numpy as np

from tailorfit.passes.benchmark import synthetic_inputs
from tailorfit.pipeline.models.handles import Lowered
from tailorfit.targets import get_target


def main(spec: dict) -> float:
    target = get_target(spec["target"])
    importlib.import_module(target.packages[0].replace("-", "_"))  # the runtime itself, loaded even without a model
    if spec["model"] is not None:
        model = Lowered.model_validate(spec["model"])
        run = target.session(model.files, spec["threads"], model.inference_precision)
        inputs = synthetic_inputs(model, spec["length"], np.random.default_rng(0))
        for _ in range(spec["runs"]):
            run(inputs)
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM). Not getrusage's ru_maxrss: that survives fork + exec, so a child of the
    2 GB bench process would report at least the parent's RSS."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


if __name__ == "__main__":
    print(json.dumps({"peak_rss_mb": round(main(json.loads(sys.argv[1])), 1)}))
