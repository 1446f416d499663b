"""tailorfit's core: the pass contract, the pipeline graph, the cache, the manifest and the CLI.

The Python API mirrors the CLI::

    from tailorfit.pipeline import run_pipeline, Pipeline, load_recipe
    result = run_pipeline("recipes/default.yaml", out="artifacts")
"""
from .contract import Pass, PassConfig, PassContext, all_passes, get_pass
from .errors import TailorfitError
from .graph import Pipeline
from .handles import Artifact, Dataset, Handle, HFModel, Lowered
from .inspect_run import read_run
from .policy import QuantizationPolicy
from .recipe import Recipe, load_recipe
from .runner import RunResult, run_pipeline

__all__ = [
    "Artifact", "Dataset", "HFModel", "Handle", "Lowered", "Pass", "PassConfig", "PassContext", "Pipeline", "QuantizationPolicy",
    "Recipe", "RunResult", "TailorfitError", "all_passes", "get_pass", "load_recipe", "read_run", "run_pipeline",
]
