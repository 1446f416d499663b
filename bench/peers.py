"""Peer artifacts: what a user gets today from other tools for the same fine-tuned model, built with those tools' own
APIs (and their defaults where a user would keep them), then evaluated on the test split with tailorfit's evaluate
pass on their runtime.

Every peer is calibrated on the same train rows as tailorfit's INT8 models (the quantize pass's own sampler and
settings from the recipe), so calibration data is not a difference between them. Each is built once into
``<bench out>/.cache/<peer>/<key>/`` (a temp folder renamed into place; tailorfit's cache class), the key covering
its inputs' cache keys, the settings and the peer tools' versions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tailorfit.passes.evaluate import Evaluate, EvaluateConfig
from tailorfit.passes.quantize import Quantize, QuantizeConfig
from tailorfit.pipeline.cache import Cache, package_versions
from tailorfit.pipeline.contract import PassContext
from tailorfit.pipeline.models.data import encode_rows, read_split
from tailorfit.pipeline.families import family_by_name
from tailorfit.pipeline.models.handles import Lowered
from tailorfit.pipeline.models.loading import load_preprocessor
from tailorfit.targets import get_target
from tailorfit.targets.base import LINEAR_MAP

from .runs import RecipeRun

log = logging.getLogger("tailorfit.bench")
VERSION = 1  # bump when a builder changes: old peer folders stop matching
PACKAGES = ("optimum-intel", "optimum", "transformers", "openvino", "nncf", "onnxruntime", "onnx")
MAX_DROP = 0.01  # NNCF accuracy control: at most 1 point of validation accuracy below FP32 (absolute)


def build_peers(run: RecipeRun, ov_fp32: Lowered, ort_fp32: Lowered, cache: Cache) -> dict[str, Lowered]:
    """``{peer name: evaluated Lowered}`` for the three peers, built or read from ``cache``."""
    settings = {"evaluate": run.evaluate_config(), "calibration": run.int8_config(), "seed": run.seed}
    builders: dict[str, tuple[dict[str, Any], Callable[[Path], Lowered]]] = {
        "optimum-intel-int8": ({"model": run.finetuned.key}, lambda work: _optimum_intel_int8(run, work)),
        "nncf-accuracy-control": ({"model": ov_fp32.key, "max_drop": MAX_DROP}, lambda work: _nncf_accuracy_control(run, ov_fp32, work)),
        "ort-quantize-static": ({"model": ort_fp32.key}, lambda work: _ort_quantize_static(run, ort_fp32, work)),
    }
    out = {}
    for name, (inputs, build) in builders.items():
        out[name] = _cached(cache, name, {**inputs, **settings}, lambda work, build=build: _evaluated(run, build(work), work))
    return out


def _cached(cache: Cache, name: str, inputs: dict[str, Any], build: Callable[[Path], Lowered]) -> Lowered:
    payload = {"peer": name, "version": VERSION, "inputs": inputs, "packages": package_versions(PACKAGES)}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    found = cache.lookup(name, key)
    if found is not None:
        return found
    log.info("building peer %s (%s)", name, key)
    work = cache.work_dir(name, key)
    shutil.rmtree(work)  # a killed build leaves nothing worth resuming
    work.mkdir()
    return cache.commit(name, key, build(work), work)


def _evaluated(run: RecipeRun, model: Lowered, work: Path) -> Lowered:
    """Test-split accuracy on the peer's runtime, by tailorfit's evaluate pass with the recipe's settings."""
    ctx = PassContext(model.candidate, work, seed=run.seed, threads=run.threads, log=log)
    return Evaluate(EvaluateConfig(**run.evaluate_config())).run(ctx, model, run.data)


def _calibration(run: RecipeRun, model: Lowered) -> list[dict[str, np.ndarray]]:
    """The train rows tailorfit's own INT8 quantization calibrates on, encoded for ``model``'s inputs."""
    return Quantize(QuantizeConfig(**run.int8_config())).calibration_inputs(model, run.data, run.seed)


def _optimum_intel_int8(run: RecipeRun, work: Path) -> Lowered:
    """optimum-intel's path: export the checkpoint folder with ``OVModelForSequenceClassification(export=True)``, then
    ``OVQuantizer`` with a static ``OVQuantizationConfig`` (its defaults: transformer model type, asymmetric
    activations, fast bias correction). The calibration rows go in as an ``nncf.Dataset``: optimum's own dataset
    builder needs the ``datasets`` package and a hub dataset."""
    import nncf
    from optimum.intel import OVConfig, OVModelForSequenceClassification, OVQuantizationConfig, OVQuantizer

    source = run.finetuned
    exported = OVModelForSequenceClassification.from_pretrained(source.path, export=True, compile=False)
    names = [port.get_any_name() for port in exported.model.inputs]
    model = Lowered(target="openvino-cpu", files=[], candidate="optimum-intel-int8", precision="int8", inference_precision="f32", inputs=names, source=source)
    rows = _calibration(run, model)
    out = work / "openvino"
    config = OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(rows)))
    OVQuantizer.from_pretrained(exported).quantize(calibration_dataset=nncf.Dataset(rows), ov_config=config, save_directory=out)
    return model.model_copy(update={"files": [out / "openvino_model.xml", out / "openvino_model.bin"]})


def _nncf_accuracy_control(run: RecipeRun, ov_fp32: Lowered, work: Path) -> Lowered:
    """NNCF's accuracy-aware PTQ on tailorfit's FP32 OpenVINO IR: quantize everything, then revert the most harmful
    quantized ops to float until validation accuracy is within ``MAX_DROP`` of FP32 (validation split; NNCF compiles
    both models at f32 itself)."""
    import nncf
    import openvino as ov

    tok = load_preprocessor(ov_fp32.source)
    max_length = EvaluateConfig(**run.evaluate_config()).max_length
    rows = read_split(run.data, "validation")
    validation = [(encode_rows(tok, [r], ov_fp32.inputs, max_length), r["label"]) for r in rows]

    def accuracy(compiled: Any, items: Any) -> tuple[float, list[float]]:
        correct = [float(np.argmax(compiled(inputs)[0]) == label) for inputs, label in items]
        return float(np.mean(correct)), correct  # per-row values let NNCF rank ops without re-running the model

    calibration = _calibration(run, ov_fp32)
    quantized = nncf.quantize_with_accuracy_control(
        ov.Core().read_model(ov_fp32.files[0]), nncf.Dataset(calibration), nncf.Dataset(validation, lambda item: item[0]), accuracy,
        max_drop=MAX_DROP, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calibration), model_type=nncf.ModelType.TRANSFORMER,
    )
    out = work / "openvino"
    out.mkdir()
    ov.save_model(quantized, out / "model.xml", compress_to_fp16=False)
    files = [out / "model.xml", out / "model.bin"]
    return _with_precisions(ov_fp32, files, "nncf-accuracy-control", run.threads)


def _ort_quantize_static(run: RecipeRun, ort_fp32: Lowered, work: Path) -> Lowered:
    """ONNX Runtime's ``quantize_static`` called as its documentation shows, every option at its default (QDQ,
    int8 activations and weights, per-tensor, MinMax, all supported op types), on tailorfit's FP32 ONNX lowering."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    batches = iter(_calibration(run, ort_fp32))

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    out = work / "onnx"
    out.mkdir()
    quantize_static(str(ort_fp32.files[0]), str(out / "model.onnx"), Reader())
    return _with_precisions(ort_fp32, [out / "model.onnx"], "ort-quantize-static", run.threads)


def _with_precisions(fp32: Lowered, files: list[Path], candidate: str, threads: int) -> Lowered:
    """The peer's handle, with which linears its runtime really executes in int8 (read back the way tailorfit's
    quantize pass verifies its own policies: node names survive both tools, so the FP32 lowering's map applies)."""
    shutil.copy2(fp32.files[0].parent / LINEAR_MAP, files[0].parent / LINEAR_MAP)
    mapping = json.loads((files[0].parent / LINEAR_MAP).read_text())
    family = family_by_name(fp32.source.family)
    linear = {n for n, m in mapping.items() if (where := family.classify(m)) is None or where[2]}  # not attention products
    executed = {n: p for n, p in get_target(fp32.target).runtime_precisions(files, threads, fp32.inference_precision).items() if n in linear}
    float_modules = sorted({mapping[n] for n, p in executed.items() if p != "int8"})
    int8 = sum(p == "int8" for p in executed.values())
    return Lowered(
        target=fp32.target, files=files, candidate=candidate, precision="int8" if not float_modules else "mixed",
        inference_precision=fp32.inference_precision, inputs=fp32.inputs, source=fp32.source,
        metrics={"int8_linears": int8, "fp32_linears": len(executed) - int8, "fp32_modules": float_modules},
    )
