"""The built-in passes, one module each. Importing this package registers them by name."""
from . import benchmark, dataset, evaluate, finetune, load, lower, package, quantize  # noqa: F401
