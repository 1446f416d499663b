"""Weight-only INT8 / INT4 linears for torch-cpu: Neural Compressor rounds the weights (RTN); the exported program
stores the integers (int8, or two int4 values per uint8) and widens them to float just before each product.

Neural Compressor's own ``INCWeightOnlyLinear`` dequantizes its packed weights once and keeps the float copy, so a
program exported from it stores float. PyTorch's weight-only CPU kernels (``_weight_int8pack_mm``,
``_weight_int4pack_mm_for_cpu``) store integers too but, measured here, run a 256-token prefill 30-100x slower
than a float linear; widening in the graph costs about what the float product does, and Inductor can fuse it.
"""
from __future__ import annotations

import logging
import os
import tempfile

import torch
from torch import nn
from torch.nn import functional as F

from tailorfit.pipeline.errors import TailorfitError


class Int8WeightOnlyLinear(nn.Module):
    """A linear with per-output-channel symmetric int8 weights; activations stay float."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight.to(torch.int8))
        self.register_buffer("scales", scales.reshape(-1).float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight.to(x.dtype)) * self.scales
        return y if self.bias is None else y + self.bias


class Int4WeightOnlyLinear(nn.Module):
    """A linear with group-wise symmetric int4 weights, two per byte (stored as q + 8, low nibble first)."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, group_size: int):
        super().__init__()
        unsigned = (weight.to(torch.int16) + 8).to(torch.uint8)
        self.register_buffer("weight", unsigned[:, 0::2] | (unsigned[:, 1::2] << 4))
        self.register_buffer("scales", scales.float())  # (out, groups)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.weight.shape[0]
        q = torch.stack([self.weight & 15, self.weight >> 4], -1).reshape(out, -1, self.group_size).to(x.dtype) - 8
        return F.linear(x, (q * self.scales[..., None]).reshape(out, -1), self.bias)


def neural_compressor_settings() -> None:
    """Apply the run's log rule to Neural Compressor (errors only, everything under --debug): it sets its logger's level
    when imported, after the CLI quieted library loggers. Its workspace goes to the temporary folder: by default it
    creates ``nc_workspace/<time>/`` in the user's working folder."""
    from neural_compressor.common import set_workspace
    from neural_compressor.common.utils.logger import Logger

    debug = logging.getLogger("tailorfit").getEffectiveLevel() <= logging.DEBUG
    Logger().get_logger().setLevel(logging.DEBUG if debug else logging.ERROR)
    set_workspace(os.path.join(tempfile.gettempdir(), "tailorfit-nc_workspace"))


def compress_linears(model: nn.Module, precisions: dict[str, str], group_size: int) -> nn.Module:
    """Round the weights of the named linears (module path -> ``int8``/``int4``) with Neural Compressor's RTN, in place.

    int8 is per output channel, int4 per group of ``group_size`` inputs; both symmetric. Other linears stay float.
    """
    neural_compressor_settings()  # before its torch part, which warns on import
    from neural_compressor.torch.quantization import RTNConfig, convert, prepare

    modules = dict(model.named_modules())
    for path, precision in precisions.items():
        layer = modules.get(path)
        if not isinstance(layer, nn.Linear):
            raise TailorfitError(f"weight-only quantization on torch-cpu needs nn.Linear layers; {path} is a {type(layer).__name__}",
                                 "keep that layer fp32 in the policy, or use openvino-cpu")
        if precision == "int4" and layer.in_features % group_size:
            raise TailorfitError(f"{path} has {layer.in_features} inputs, not whole groups of {group_size} (the int4 group size)",
                                 "set quantize's group_size to an even divisor of it (32 and 64 suit most models), or keep the layer int8")
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
