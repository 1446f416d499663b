"""torch-inductor-cpu: the same torch.export program as torch-cpu, served compiled by torch.compile (Inductor) with
frozen weights, where PyTorch fuses an INT8 program's quantize/dequantize pairs into oneDNN int8 kernels."""
from __future__ import annotations

from typing import Callable

import torch

from .torch_cpu import TorchCPU


class TorchInductorCPU(TorchCPU):
    name = "torch-inductor-cpu"
    runtime = "PyTorch CPU, torch.compile (Inductor, frozen weights) of the torch.export program"
    folder = "torch-inductor"

    def executable(self, program: torch.export.ExportedProgram) -> Callable[..., torch.Tensor]:
        """Compiled on the first call of each input shape (tens of seconds for a small BERT); later calls run the kernels.
        Freezing folds the weights into constants, which lets Inductor prepack INT8 weights for oneDNN."""
        import torch._inductor.config as inductor

        compiled = torch.compile(program.module())

        def run(*tensors: torch.Tensor) -> torch.Tensor:
            with inductor.patch(freezing=True):
                return compiled(*tensors)

        return run
