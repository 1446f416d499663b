"""The built-in passes, one module each. Importing this package registers them by name."""
from . import benchmark, dataset, evaluate, extract, finetune, load, lower, package, quantize, supernet, supernet_finetune  # noqa: F401
