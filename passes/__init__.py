"""The built-in passes, one module each. Importing this package registers them by name (the
``tailorfit.passes`` entry point in pyproject.toml is how the pipeline finds them)."""
import torch

from tailorfit.pipeline.contract import BEFORE_EACH_STEP, PassContext

from . import benchmark, choose, dataset, distill, evaluate, extract, finetune, load, lower, package, quantize, search, select, supernet, supernet_finetune  # noqa: F401


def _torch_threads(ctx: PassContext) -> None:
    # every pass here computes with torch somewhere (export, training, the search's estimate), and a Ray worker
    # starts with one thread per CPU it was given
    torch.set_num_threads(ctx.threads)


BEFORE_EACH_STEP.append(_torch_threads)
