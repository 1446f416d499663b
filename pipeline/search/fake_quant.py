"""Simulating a precision policy in PyTorch: fake-quantized INT8 linears, for the cheap search-time accuracy estimate.

Weights: symmetric per-output-channel INT8; activations (a linear's input): asymmetric per-tensor UINT8 over each
batch's own range. That is what the targets' static quantizers do, minus their calibrated ranges and their
quantized attention products, so the estimate is an approximation whose ranking quality the search reports
(Kendall tau against the same candidates measured on the target).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tailorfit.pipeline.families import ModelFamily
from tailorfit.pipeline.models.policy import HEAD


def _fake_weight(weight: torch.Tensor, axis: int) -> torch.Tensor:
    dims = [d for d in range(weight.dim()) if d != axis]
    scale = (weight.abs().amax(dim=dims) / 127).clamp(min=1e-12).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight.float(), scale, zero, axis, -128, 127).to(weight.dtype)


def _fake_activation(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    x = args[0]
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max((high - low) / 255, 1e-12)
    zero = int(round(-low / scale))
    return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *args[1:])


@contextmanager
def simulated_policy(model: nn.Module, family: ModelFamily, precisions: dict[str, str]) -> Iterator[int]:
    """Within the block, the linears the resolved policy (``"layer.group"`` / ``head`` → precision) makes int8 run
    fake-quantized; yields how many. Weights are restored on exit."""
    saved, hooks = {}, []
    try:
        for name, module in model.named_modules():
            if not isinstance(module, (nn.Linear, Conv1D)):
                continue
            where = family.classify(name)
            key = HEAD if where is None else f"{where[0]}.{where[1]}"
            if precisions.get(key) != "int8":
                continue
            saved[module] = module.weight.data
            # Linear stores (out, in), GPT-2's Conv1D (in, out): quantize per output channel either way
            module.weight.data = _fake_weight(module.weight.data, axis=1 if isinstance(module, Conv1D) else 0)
            hooks.append(module.register_forward_pre_hook(_fake_activation))
        yield len(saved)
    finally:
        for module, weight in saved.items():
            module.weight.data = weight
        for hook in hooks:
            hook.remove()
