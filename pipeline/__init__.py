"""tailorfit: the pipeline machinery at this level (pass contract, graph, recipe, runner, cache, executor, CLI),
which knows no model, runtime or search; the domain in the sub-packages ``families``, ``supernet``, ``models`` and
``search`` (see docs/architecture.md for what each may import).

The Python API mirrors the CLI::

    from tailorfit.pipeline import run_pipeline, Pipeline, load_recipe
    result = run_pipeline("recipes/default.yaml", out="artifacts")
"""
from tailorfit.pipeline.contract import Pass, PassConfig, PassContext, all_passes, get_pass
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.graph import Pipeline
from tailorfit.pipeline.handles import Handle
from tailorfit.pipeline.inspect_run import read_run
from tailorfit.pipeline.recipe import Recipe, load_recipe
from tailorfit.pipeline.runner import RunResult, run_pipeline

__all__ = [
    "Handle", "Pass", "PassConfig", "PassContext", "Pipeline", "Recipe", "RunResult", "TailorfitError",
    "all_passes", "get_pass", "load_recipe", "read_run", "run_pipeline",
]
