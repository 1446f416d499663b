"""The built-in passes, one module each. Importing this package registers them by name."""
from . import benchmark, dataset, evaluate, extract, finetune, load, lower, package, quantize, search, select, supernet, supernet_finetune  # noqa: F401
