"""Deployment targets by name. A new target: a module here with a ``Target`` subclass, added to ``TARGETS``."""
from __future__ import annotations

from tailorfit.pipeline.errors import TailorfitError

from .base import Target
from .onnxruntime_cpu import OnnxRuntimeCPU
from .openvino_cpu import OpenVINOCPU
from .torch_cpu import TorchCPU
from .torch_inductor_cpu import TorchInductorCPU

TARGETS: dict[str, type[Target]] = {t.name: t for t in (OpenVINOCPU, OnnxRuntimeCPU, TorchCPU, TorchInductorCPU)}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise TailorfitError(f"unknown target '{name}'", f"use one of: {', '.join(TARGETS)} (see `tailorfit targets`)")
    return TARGETS[name]()
