"""openvino-cpu: OpenVINO IR via torch.export, NNCF post-training INT8 with per-layer ignored scopes, OpenVINO CPU runtime."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from tailorfit.pipeline.console import quiet_library

from .base import Session, Target, dynamic_shapes, module_of, read_linear_map, write_linear_map

_QUANTIZABLE = ("MatMul", "ScaledDotProductAttention")
_PRECISION = {"i8": "int8", "u8": "int8", "f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def _core():
    import openvino as ov

    return ov.Core()


class OpenVINOCPU(Target):
    name = "openvino-cpu"
    runtime = "OpenVINO CPU plugin"
    packages = ("openvino", "nncf", "torch")
    folder = "openvino"
    # OpenVINO computes in bf16 by default on CPUs with bf16 support; tailorfit defaults to f32 so "FP32" means FP32.
    inference_precisions = ("f32", "bf16")

    def lower(self, model: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], out_dir: Path) -> list[Path]:
        import openvino as ov

        max_seq = getattr(model.model.config, "max_position_embeddings", 512)
        program = torch.export.export(model, example, dynamic_shapes=dynamic_shapes(example, max_seq), strict=False)
        node_modules = {n.name: module_of(n.meta.get("nn_module_stack")) for n in program.graph.nodes if n.op == "call_function"}
        ov_model = ov.convert_model(program)
        for port, name in zip(ov_model.inputs, names):
            port.get_tensor().set_names({name})
        mapping = {}
        for op in ov_model.get_ordered_ops():
            module = node_modules.get(op.get_friendly_name().split("/")[0])
            if op.get_type_name() in _QUANTIZABLE and module:
                mapping[op.get_friendly_name()] = module
        xml = out_dir / "model.xml"
        ov.save_model(ov_model, xml, compress_to_fp16=False)  # the default would silently store fp16 weights
        write_linear_map(out_dir, mapping)
        return [xml, xml.with_suffix(".bin")]

    def quantize(self, files: list[Path], keep_fp32: list[str], calibration: Iterable[dict[str, np.ndarray]], size: int, out_dir: Path) -> list[Path]:
        import nncf
        import openvino as ov

        quiet_library("nncf")
        model = _core().read_model(files[0])
        quantized = nncf.quantize(
            model, nncf.Dataset(list(calibration)), model_type=nncf.ModelType.TRANSFORMER, subset_size=size,
            ignored_scope=nncf.IgnoredScope(names=keep_fp32) if keep_fp32 else None,
        )
        xml = out_dir / "model.xml"
        ov.save_model(quantized, xml, compress_to_fp16=False)
        write_linear_map(out_dir, read_linear_map(files))
        return [xml, xml.with_suffix(".bin")]

    def _compile(self, files: list[Path], threads: int, inference_precision: str):
        return _core().compile_model(
            files[0], "CPU",
            {"INFERENCE_PRECISION_HINT": inference_precision, "INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY"},
        )

    def session(self, files: list[Path], threads: int, inference_precision: str) -> Session:
        request = self._compile(files, threads, inference_precision).create_infer_request()

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return request.infer(inputs)[0].copy()

        return run

    def runtime_precisions(self, files: list[Path], threads: int, inference_precision: str) -> dict[str, str]:
        mapped = read_linear_map(files)
        by_prefix = {name.split("/")[0]: name for name in mapped}
        found: dict[str, str] = {}
        for op in self._compile(files, threads, inference_precision).get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            # only the op that multiplies: a dequantization pushed past a fused projection's split (Phi-3's Q|K|V) runs
            # in f32 under the linear's name, after the int8 FullyConnected
            if "originalLayersNames" not in info.keys() or info["layerType"].astype(str) not in ("FullyConnected", "MatMul"):
                continue
            precision = _PRECISION.get(info["runtimePrecision"].astype(str), info["runtimePrecision"].astype(str))
            for original in info["originalLayersNames"].astype(str).split(","):
                # the fused op may keep the name of the bias Add rather than the MatMul: match on the torch op prefix
                node = by_prefix.get(original.split("/")[0])
                if node:
                    found[node] = precision
        return found
