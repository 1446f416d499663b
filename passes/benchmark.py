"""benchmark: latency of a lowered model on its target runtime.

Consumes: ``Lowered``. Produces: the same ``Lowered`` with ``metrics["latency"]`` per sequence length:
batch 1, warm-up then timed runs, median / p90 / min / max, the threads and inference precision used,
and the CPU load other processes caused while measuring (a busy machine is retried, then flagged).
"""
from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import Field

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext
from tailorfit.pipeline.models.handles import Lowered
from tailorfit.pipeline.models.loading import read_config, refuse_beyond_positions
from tailorfit.targets import get_target
from tailorfit.targets.timing import measure_latency


class BenchmarkConfig(PassConfig):
    sequence_lengths: list[Annotated[int, Field(ge=1)]] = Field(default=[128], min_length=1, description="tokens per input (text models); batch is 1")
    warmup: int = Field(default=10, ge=1)
    runs: int = Field(default=100, ge=50)
    threads: int | None = Field(default=None, ge=1, description="default: the run's threads")
    max_other_load: float = Field(default=0.5, ge=0, description="cores' worth of other CPU load above which a measurement is retried")
    attempts: int = Field(default=3, ge=1)


class Benchmark(Pass):
    name = "benchmark"
    Config = BenchmarkConfig
    packages = ()  # the target adds its own (packages_for)
    keyed_context = ("seed", "threads")  # latency depends on the thread count

    def packages_for(self, inputs: dict[str, Any]) -> tuple[str, ...]:
        return (*self.packages, *get_target(inputs["model"].target).packages)
    portable = True

    def resources(self, model: Lowered) -> dict[str, float]:
        return {model.target: 1}  # on Ray: only where the target is, one measurement per node at a time

    def run(self, ctx: PassContext, model: Lowered) -> Lowered:
        c = self.config
        threads = c.threads or ctx.threads
        run = get_target(model.target).session(model.files, threads, model.inference_precision)
        rng = np.random.default_rng(ctx.seed)
        latency = {}
        lengths = c.sequence_lengths if "pixel_values" not in model.inputs else [0]
        check_length(model, max(lengths))
        with ctx.progress(f"timing {model.candidate} on {model.target}", len(lengths)) as bar:
            for length in lengths:
                inputs = synthetic_inputs(model, length, rng)
                stats = measure_latency(lambda: run(inputs), c.warmup, c.runs, c.max_other_load, c.attempts)
                if stats.busy:
                    ctx.log.warning("CPU busy while timing %s (other load %.2f cores): latency flagged", model.candidate, stats.other_cpu_load)
                latency[str(length) if length else "image"] = {**stats.as_dict(), "threads": threads, "batch": 1, "inference_precision": model.inference_precision}
                bar.advance(1)
        return model.model_copy(update={"metrics": {**model.metrics, "latency": latency}})


def check_length(model: Lowered, length: int) -> None:
    refuse_beyond_positions(read_config(model.source.path), length, model.candidate, "sequence length")


def synthetic_inputs(model: Lowered, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    config = read_config(model.source.path)
    if "pixel_values" in model.inputs:
        size = config.get("image_size", 224)
        return {"pixel_values": rng.standard_normal((1, config.get("num_channels", 3), size, size), dtype=np.float32)}
    # token values do not change the work done; the shape does
    out = {"input_ids": rng.integers(1, config["vocab_size"], size=(1, length), dtype=np.int64)}
    out["attention_mask"] = np.ones((1, length), dtype=np.int64)
    if "token_type_ids" in model.inputs:
        out["token_type_ids"] = np.zeros((1, length), dtype=np.int64)
    return out
