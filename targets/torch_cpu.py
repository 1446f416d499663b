"""torch-cpu: a torch.export ExportedProgram (.pt2), Intel Neural Compressor PT2E static INT8 with per-layer exclusions
or RTN weight-only INT8/INT4 per layer, PyTorch CPU."""
from __future__ import annotations

import itertools
import json
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from tailorfit.pipeline.errors import TailorfitError

from .base import Capture, Session, Target, dynamic_shapes, module_of, read_linear_map, write_linear_map
from .torch_weight_only import compress_linears, neural_compressor_settings

_LINEAR, _CONV1D = torch.ops.aten.linear.default, torch.ops.aten.addmm.default  # nn.Linear; GPT-2's Conv1D
_MAPPED = (_LINEAR, _CONV1D, torch.ops.aten.scaled_dot_product_attention.default)
_STORED = {torch.int8: "int8", torch.uint8: "int4"}  # a weight-only linear's stored integers (int4: two per byte)
# The program takes positional tensors: their names (and the sequence bound to re-export with) travel inside the .pt2.
_META = "tailorfit.json"


def _save(program: torch.export.ExportedProgram, meta: dict[str, Any], path: Path) -> None:
    torch.export.save(program, path, extra_files={_META: json.dumps(meta)})


def _load(path: Path) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    import torch.ao.quantization.fx._decomposed  # noqa: F401  registers the quantize/dequantize ops INT8 programs call

    extra = {_META: ""}
    program = torch.export.load(path, extra_files=extra)
    return program, json.loads(extra[_META])


def _failing_module(exc: BaseException | None, model: nn.Module) -> str | None:
    """The innermost submodule whose forward was running when export failed (non-strict export runs the Python code)."""
    names = {id(m): n.removeprefix("model.") if n != "model" else type(m).__name__ for n, m in model.named_modules() if n}
    found = None
    while exc is not None:
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            found = names.get(id(frame.f_locals.get("self")), found)
        exc = exc.__cause__ or exc.__context__
    return found


def _sources(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The tensor inputs of the program (placeholders) a node is computed from."""
    seen, stack, found = set(), [node], []
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor):
            found.append(n)
        stack += n.all_input_nodes
    return found


def _dequantized(arg: Any) -> bool:
    return isinstance(arg, torch.fx.Node) and "dequantize" in str(arg.target)


class TorchCPU(Target):
    name = "torch-cpu"
    runtime = "PyTorch CPU (torch.export program, eager)"
    packages = ("torch", "neural-compressor-pt", "torchao")
    folder = "torch"
    inference_precisions = ("f32",)

    def lower(self, model: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], out_dir: Path) -> list[Path]:
        max_seq = getattr(model.model.config, "max_position_embeddings", 512)
        try:
            program = torch.export.export(model, example, dynamic_shapes=dynamic_shapes(example, max_seq), strict=False)
        except Exception as exc:
            where = _failing_module(exc, model)
            raise TailorfitError(
                f"torch.export cannot capture this model{f' (in {where})' if where else ''}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}",
                f"make {where or 'the model'} capturable by torch.export (data-dependent Python branches are the usual cause), or try "
                "onnxruntime-cpu, whose exporter also tries other capture modes; openvino-cpu captures with this same torch.export",
            ) from exc
        mapping = {n.name: module_of(n.meta.get("nn_module_stack")) for n in program.graph.nodes if n.target in _MAPPED}
        path = out_dir / "model.pt2"
        _save(program, {"inputs": names, "max_sequence": max_seq}, path)
        write_linear_map(out_dir, {node: module for node, module in mapping.items() if module})
        return [path]

    def quantize(self, files: list[Path], keep_fp32: list[str], calibration: Iterable[dict[str, np.ndarray]], size: int, out_dir: Path) -> list[Path]:
        neural_compressor_settings()  # before its torch part, which warns on import
        from neural_compressor.torch.quantization import StaticQuantConfig, convert, prepare

        program, meta = _load(files[0])
        graph = program.module()
        config = StaticQuantConfig()
        fp32 = StaticQuantConfig(w_dtype="fp32", act_dtype="fp32")
        keep, mapped = set(keep_fp32), read_linear_map(files)
        for node in graph.graph.nodes:
            if node.target == _CONV1D and node.name in mapped and node.name not in keep:
                raise TailorfitError(
                    f"Neural Compressor's PT2E quantizer cannot make {mapped[node.name]} int8 (a Conv1D layer, as in GPT-2)",
                    "quantize this model on openvino-cpu or onnxruntime-cpu, or keep its layers fp32 on torch-cpu",
                )
            # set_local matches module paths from nn_module_stack (a graph node name is silently ignored); attention
            # products need no exclusion: the X86 quantizer leaves scaled_dot_product_attention in float.
            if node.name in keep and node.target == _LINEAR:
                config.set_local(list(node.meta["nn_module_stack"].values())[-1][0], fp32)
        example = program.example_inputs[0]
        shapes = tuple(dynamic_shapes(example, meta["max_sequence"])["tensors"])  # the unlifted graph takes them positionally
        graph._exported, graph.dynamic_shapes = True, shapes  # what Neural Compressor's own export() would have set
        prepared = prepare(graph, config, example_inputs=example)
        with torch.no_grad():
            for batch in itertools.islice(calibration, size):
                prepared(*(torch.as_tensor(batch[n]) for n in meta["inputs"]))
        quantized = convert(prepared)
        path = out_dir / "model.pt2"
        _save(torch.export.export(quantized, example, dynamic_shapes=shapes, strict=False), meta, path)
        write_linear_map(out_dir, mapped)
        return [path]

    def compress_weights(self, files: list[Path], weights: dict[str, str], group_size: int, out_dir: Path, capture: Capture) -> list[Path]:
        """Neural Compressor's RTN rounds the chosen linears of a fresh PyTorch copy of the model, which is exported again:
        a .pt2 program cannot be re-quantized weight-only, since its linears are no longer modules."""
        mapped = read_linear_map(files)
        model, example, names = capture()
        compress_linears(model, {f"model.{mapped[node]}": p for node, p in weights.items() if p != "fp32"}, group_size)
        out = self.lower(model, example, names, out_dir)
        kept = set(mapped.values())  # the fresh export maps the same modules under new node names
        write_linear_map(out_dir, {node: module for node, module in read_linear_map(out).items() if module in kept})
        return out

    def weight_precisions(self, files: list[Path]) -> dict[str, str]:
        """Read from the program's graph: the tensors a linear's weight is computed from, traced back to the program's
        inputs — a float parameter (fp32), int8 integers (int8) or bytes holding two int4 values each (int4)."""
        program, _ = _load(files[0])
        found = {}
        for node in program.graph.nodes:
            if node.target == _LINEAR:  # float scales join the integers of a weight-only linear: the integers say what it is
                stored = {_STORED[p.meta["val"].dtype] for p in _sources(node.args[1]) if p.meta["val"].dtype in _STORED}
                found[module_of(node.meta.get("nn_module_stack"))] = "+".join(sorted(stored)) or "fp32"
        return found

    def executable(self, program: torch.export.ExportedProgram) -> Callable[..., torch.Tensor]:
        """What a session calls: the program's module, run op by op by eager PyTorch."""
        return program.module()

    def session(self, files: list[Path], threads: int, inference_precision: str) -> Session:
        program, meta = _load(files[0])
        module = self.executable(program)

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            torch.set_num_threads(threads)  # process-wide: set per call so sessions with different counts can coexist
            with torch.no_grad():  # not inference_mode: Inductor's frozen graphs reject inference tensors
                return module(*(torch.as_tensor(inputs[n]) for n in meta["inputs"])).numpy()

        return run

    def runtime_precisions(self, files: list[Path], threads: int, inference_precision: str) -> dict[str, str]:
        """Reads the saved program, which PyTorch executes op by op: a linear fed by dequantize ops computes on int8-quantized
        activations and weights (simulated in float by eager PyTorch; torch.compile would fuse them into int8 kernels)."""
        program, _ = _load(files[0])
        by_module = {module: node for node, module in read_linear_map(files).items()}
        found = {}
        for node in program.graph.nodes:
            name = by_module.get(module_of(node.meta.get("nn_module_stack"))) if node.target in _MAPPED else None
            if name:
                fed = [_dequantized(a) for a in (node.args[1:3] if node.target == _CONV1D else node.args[:2])]  # addmm(bias, x, w)
                found[name] = "int8" if all(fed) else "fp32" if not any(fed) else "partly-int8"
        return found
