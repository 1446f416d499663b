"""The target interface: how to lower a model, apply a precision policy, run it, and read back its precisions."""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Iterable

import numpy as np
import torch
from torch import nn

from tailorfit.pipeline.errors import TailorfitError

Session = Callable[[dict[str, np.ndarray]], np.ndarray]
# the model to re-capture, for targets whose weight-only path quantizes in PyTorch: (wrapper, example inputs, input names)
Capture = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...], list[str]]]
LINEAR_MAP = "linear_map.json"  # runtime node name -> torch module path, written by ``lower``


class Target(ABC):
    """One deployment target. A new device or runtime is a new subclass in its own module under targets/."""

    name: ClassVar[str]
    runtime: ClassVar[str]
    packages: ClassVar[tuple[str, ...]]
    folder: ClassVar[str]  # the artifact sub-folder its files go to
    inference_precisions: ClassVar[tuple[str, ...]]  # first = default; always stated in results

    @abstractmethod
    def lower(self, model: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], out_dir: Path) -> list[Path]:
        """Write the runtime's model files for ``model`` (positional ``names`` in, logits out) and a linear map."""

    @abstractmethod
    def quantize(self, files: list[Path], keep_fp32: list[str], calibration: Iterable[dict[str, np.ndarray]], size: int, out_dir: Path) -> list[Path]:
        """INT8 post-training static quantization, leaving the runtime nodes ``keep_fp32`` in float."""

    @abstractmethod
    def session(self, files: list[Path], threads: int, inference_precision: str) -> Session:
        """A callable running one batch of named numpy inputs and returning logits."""

    @abstractmethod
    def runtime_precisions(self, files: list[Path], threads: int, inference_precision: str) -> dict[str, str]:
        """Precision the runtime really executes each mapped node in (``int8``/``fp32``), read from the runtime itself."""

    def compress_weights(self, files: list[Path], weights: dict[str, str], group_size: int, out_dir: Path, capture: Capture) -> list[Path]:
        """Weight-only quantization: the mapped linears in ``weights`` stored ``int8`` (per output channel) or ``int4``
        (symmetric, per group of ``group_size`` inputs); activations and every other node stay float."""
        raise TailorfitError(f"{self.name} has no weight-only quantization", "use torch-cpu for a weight-only scheme, or scheme: static")

    def weight_precisions(self, files: list[Path]) -> dict[str, str]:
        """Module path -> the precision (``int8``/``int4``/``fp32``) each mapped linear's weights have in the artifact."""
        raise TailorfitError(f"{self.name} has no weight-only quantization", "use torch-cpu")

    def describe(self) -> str:
        return f"{self.runtime}; inference precisions {', '.join(self.inference_precisions)}"


def write_linear_map(out_dir: Path, mapping: dict[str, str]) -> Path:
    path = out_dir / LINEAR_MAP
    path.write_text(json.dumps(mapping, indent=1, sort_keys=True))
    return path


def read_linear_map(files: list[Path]) -> dict[str, str]:
    return json.loads((files[0].parent / LINEAR_MAP).read_text())


def dynamic_shapes(example: tuple[torch.Tensor, ...], max_seq: int) -> dict[str, tuple[dict[int, torch.export.Dim], ...]]:
    """Batch (and sequence, for token inputs) dynamic, shared across inputs; keyed like ExportWrapper's ``*tensors``."""
    batch = torch.export.Dim("batch", max=1024)
    seq = torch.export.Dim("sequence", max=max_seq)
    return {"tensors": tuple({0: batch} if t.dim() != 2 else {0: batch, 1: seq} for t in example)}


def module_of(stack: dict | None) -> str | None:
    """The innermost module path from torch.export's ``nn_module_stack`` meta, without the export wrapper's prefix."""
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path.removeprefix("model.") if path.startswith("model.") else path
