"""onnxruntime-cpu: ONNX via torch.onnx (dynamo), ONNX Runtime static QDQ INT8 with per-node exclusions, CPU execution provider."""
from __future__ import annotations

import ast
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .base import Session, Target, dynamic_shapes, read_linear_map, write_linear_map

_QUANTIZED_OPS = {"QLinearMatMul", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"}
_SCOPES = "pkg.torch.onnx.name_scopes"


class OnnxRuntimeCPU(Target):
    name = "onnxruntime-cpu"
    runtime = "ONNX Runtime CPU execution provider"
    packages = ("onnxruntime", "onnx", "onnxscript", "torch")
    folder = "onnx"
    inference_precisions = ("f32",)

    def lower(self, model: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], out_dir: Path) -> list[Path]:
        import onnx

        max_seq = getattr(model.model.config, "max_position_embeddings", 512)
        program = torch.onnx.export(
            model, example, input_names=names, output_names=["logits"], dynamic_shapes=dynamic_shapes(example, max_seq),
            dynamo=True, external_data=False, verbose=False,
        )
        path = out_dir / "model.onnx"
        program.save(path, external_data=False)
        mapping = {}
        for node in onnx.load(path).graph.node:
            scopes = {p.key: p.value for p in node.metadata_props}.get(_SCOPES)
            if node.op_type in ("MatMul", "Gemm") and scopes:
                mapping[node.name] = ast.literal_eval(scopes)[-2].removeprefix("model.")
        write_linear_map(out_dir, mapping)
        return [path]

    def quantize(self, files: list[Path], keep_fp32: list[str], calibration: Iterable[dict[str, np.ndarray]], size: int, out_dir: Path) -> list[Path]:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        batches = iter(list(calibration)[:size])

        class Reader(CalibrationDataReader):
            def get_next(self):
                return next(batches, None)

        path = out_dir / "model.onnx"
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            pre = Path(tmp) / "pre.onnx"
            # symbolic shape inference fails on dynamo exports; node names survive pre-processing (checked in tests)
            quant_pre_process(str(files[0]), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=keep_fp32,
            )
        write_linear_map(out_dir, read_linear_map(files))
        return [path]

    def _session(self, files: list[Path], threads: int, optimized: Path | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if optimized:
            opts.optimized_model_filepath = str(optimized)
        return ort.InferenceSession(str(files[0]), opts, providers=["CPUExecutionProvider"])

    def session(self, files: list[Path], threads: int, inference_precision: str) -> Session:
        sess = self._session(files, threads)
        wanted = {i.name for i in sess.get_inputs()}

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return sess.run(None, {k: v for k, v in inputs.items() if k in wanted})[0]

        return run

    def runtime_precisions(self, files: list[Path], threads: int, inference_precision: str) -> dict[str, str]:
        """Reads the graph ONNX Runtime actually executes (after its fusions): quantized kernels keep the node's name."""
        import onnx

        mapped = read_linear_map(files)
        with tempfile.TemporaryDirectory() as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            self._session(files, threads, optimized)
            graph = onnx.load(optimized).graph
        return {n.name: "int8" if n.op_type in _QUANTIZED_OPS else "fp32" for n in graph.node if n.name in mapped}
