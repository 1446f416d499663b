"""Weight-only INT8 / INT4 linears for torch-cpu: Neural Compressor rounds the weights (RTN), PyTorch's CPU kernels run them.

Neural Compressor's own ``INCWeightOnlyLinear`` dequantizes its packed weights to float on first use and keeps
them, so a program exported from it stores and computes in float. Here NC's integer weights and scales are
moved into modules that call PyTorch's weight-only CPU kernels (``_weight_int8pack_mm``, and the tinygemm
``_weight_int4pack_mm_for_cpu``): the exported program stores int8 / packed-int4 weights and computes with them.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from tailorfit.pipeline.errors import TailorfitError

INT8_KERNEL = torch.ops.aten._weight_int8pack_mm.default
INT4_KERNEL = torch.ops.aten._weight_int4pack_mm_for_cpu.default


class Int8WeightOnlyLinear(nn.Module):
    """A linear with per-output-channel symmetric int8 weights; activations stay float."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight.to(torch.int8))
        self.register_buffer("scales", scales.reshape(-1).float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = INT8_KERNEL(x.reshape(-1, x.shape[-1]), self.weight, self.scales).reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


class Int4WeightOnlyLinear(nn.Module):
    """A linear with group-wise symmetric int4 weights, packed for the tinygemm CPU kernel."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, group_size: int):
        super().__init__()
        self.group_size = group_size
        # tinygemm stores unsigned nibbles and computes (q - 8) * scale + zero: a symmetric q in [-8, 7] is q + 8, zero 0
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu((weight.to(torch.int32) + 8), 1))
        scales = scales.float().t().contiguous()  # (groups, out)
        self.register_buffer("scales_and_zeros", torch.stack([scales, torch.zeros_like(scales)], -1))
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = INT4_KERNEL(x.reshape(-1, x.shape[-1]), self.weight, self.group_size, self.scales_and_zeros).reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def compress_linears(model: nn.Module, precisions: dict[str, str], group_size: int) -> nn.Module:
    """Round the weights of the named linears (module path -> ``int8``/``int4``) with Neural Compressor's RTN, in place.

    int8 is per output channel, int4 per group of ``group_size`` inputs; both symmetric. Other linears stay float.
    """
    from neural_compressor.common.utils.logger import Logger

    debug = logging.getLogger("tailorfit").getEffectiveLevel() <= logging.DEBUG
    Logger().get_logger().setLevel(logging.DEBUG if debug else logging.ERROR)  # before its torch part, which warns on import
    from neural_compressor.torch.quantization import RTNConfig, convert, prepare

    modules = dict(model.named_modules())
    for path, precision in precisions.items():
        layer = modules.get(path)
        if not isinstance(layer, nn.Linear):
            raise TailorfitError(f"weight-only quantization on torch-cpu needs nn.Linear layers; {path} is a {type(layer).__name__}",
                                 "keep that layer fp32 in the policy, or use openvino-cpu")
        if precision == "int4" and (layer.in_features % group_size or layer.out_features % 16):
            raise TailorfitError(f"{path} ({layer.in_features} inputs, {layer.out_features} outputs) does not fit PyTorch's int4 CPU kernel, "
                                 f"which needs inputs in whole groups of {group_size} and outputs in multiples of 16",
                                 "set quantize's group_size to a divisor of its inputs, or keep the layer int8")
    config = RTNConfig(dtype="fp32")
    for path, precision in precisions.items():
        config.set_local(path, RTNConfig(bits=8, group_size=-1, use_sym=True) if precision == "int8" else RTNConfig(bits=4, group_size=group_size, use_sym=True))
    rounded = convert(prepare(model, config))
    for path in precisions:
        parent, _, child = path.rpartition(".")
        owner = rounded.get_submodule(parent) if parent else rounded
        layer = getattr(owner, child)
        unpacked = layer.unpack()
        weight, scales, bias, zero = unpacked["int_weight"], unpacked["scales"], unpacked["bias"], unpacked["zp"]
        if zero is not None:  # the Hugging Face storage format keeps symmetric weights unsigned, offset by 2**(bits-1)
            if not bool((zero == 2 ** (layer.bits - 1)).all()):
                raise TailorfitError(f"Neural Compressor returned asymmetric weights for {path}", "report this; symmetric RTN was asked for")
            weight = weight.to(torch.int32) - 2 ** (layer.bits - 1)
        replacement = Int8WeightOnlyLinear(weight, scales, bias) if layer.bits == 8 else Int4WeightOnlyLinear(weight, scales, bias, group_size)
        setattr(owner, child, replacement)
    return rounded
