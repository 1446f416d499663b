"""Steps as tasks (pipeline/step_tasks.py): on a distributed executor the runner hands ready portable steps over
in waves, latency measurements last and per target; results equal the sequential run's, and a failing step does
not lose the work of the steps beside it. The executor here runs the tasks in-process (test_ray.py runs them on Ray)."""
from __future__ import annotations

import json

import pytest

from tailorfit.pipeline import run_pipeline
from tailorfit.pipeline.contract import PASSES, Pass, PassContext
from tailorfit.pipeline.executor import LocalExecutor
from tailorfit.pipeline.models.handles import Lowered
from tailorfit.pipeline.step_tasks import input_folders

from conftest import classification_recipe


class WavesInProcess(LocalExecutor):
    """Hands steps over in waves like Ray, runs them here, and remembers each wave's step ids."""

    distributed = True

    def __init__(self):
        super().__init__()
        self.waves: list[list[str]] = []

    def map(self, fn, items, shared_args=None, resources=None, on_result=None):
        self.waves.append([item.step_id for item in items])
        return super().map(fn, items, shared_args, resources, on_result)


@pytest.fixture(scope="module")
def sequential(tiny_bert, sentences_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("step-tasks")
    result = run_pipeline(classification_recipe(tiny_bert, sentences_csv), out=out, quiet=True)
    predictions = {sid: h.reports["predictions"].read_text() for sid, h in result.outputs.items() if isinstance(h, Lowered) and "predictions" in h.reports}
    return result, predictions, out


def _waves_executor(monkeypatch) -> WavesInProcess:
    pool = WavesInProcess()
    monkeypatch.setattr("tailorfit.pipeline.runner.executor_from", lambda spec: pool)
    return pool


def test_ready_steps_run_in_waves_with_latency_last_and_give_the_sequential_results(sequential, tiny_bert, sentences_csv, monkeypatch):
    first, predictions, out = sequential
    pool = _waves_executor(monkeypatch)
    again = run_pipeline(classification_recipe(tiny_bert, sentences_csv), out=out, quiet=True, force=["lower"])
    assert pool.waves == [
        ["openvino-fp32", "onnxruntime-fp32"],
        ["openvino-fp32-eval", "openvino-int8", "onnxruntime-fp32-eval", "onnxruntime-int8"],
        ["openvino-int8-eval", "onnxruntime-int8-eval"],
        ["openvino-fp32-bench", "openvino-int8-bench"],  # one target's measurements together, never beside other work
        ["onnxruntime-fp32-bench", "onnxruntime-int8-bench"],
    ]
    steps = again.manifest["steps"]
    assert steps["finetune"]["cache_hit"] and "ran_as_task" not in steps["finetune"] and "ran_as_task" not in steps["package"]
    cache = (out / ".cache").resolve()
    for sid in ("openvino-fp32-eval", "onnxruntime-int8-eval"):
        handle = again.outputs[sid]
        assert "ran_as_task" in steps[sid] and steps[sid]["produced"]["seconds"] > 0
        assert handle.metrics["accuracy"] == first.outputs[sid].metrics["accuracy"]
        assert handle.reports["predictions"].read_text() == predictions[sid]
        # every path the committed handle holds is in this run's cache, none in a task's scratch folder
        assert all(f.is_relative_to(cache) and f.exists() for f in [*handle.files, *handle.reports.values(), handle.source.path])
    assert again.outputs["openvino-int8-bench"].metrics["latency"]["16"]["median_ms"] > 0
    assert again.manifest["status"] == "finished" and sorted(again.manifest["metrics"]) == sorted(first.manifest["metrics"])


class Explode(Pass):
    """A portable pass that fails, to see what happens to the steps beside it."""

    portable = True

    def run(self, ctx: PassContext, model: Lowered) -> Lowered:
        raise ValueError("broken on purpose")


def test_a_failing_step_stops_the_run_after_its_wave_is_committed(sequential, tiny_bert, sentences_csv, monkeypatch):
    _, _, out = sequential
    monkeypatch.setattr(Explode, "name", "explode", raising=False)
    monkeypatch.setitem(PASSES, "explode", Explode)
    recipe = classification_recipe(tiny_bert, sentences_csv, name="explodes", targets=("openvino-cpu",))
    recipe["steps"] = recipe["steps"][:4] + [
        {"id": "boom", "pass": "explode", "inputs": {"model": "openvino-fp32"}},
        {"id": "fp32-eval", "pass": "evaluate", "inputs": {"model": "openvino-fp32"}, "config": {"max_length": 32, "bootstrap": 100}},
    ]
    pool = _waves_executor(monkeypatch)
    with pytest.raises(ValueError, match="^broken on purpose\nin step 'boom' on ") as failed:  # pytest matches notes too
        run_pipeline(recipe, out=out, quiet=True, force=["lower"])
    assert pool.waves == [["openvino-fp32"], ["boom", "fp32-eval"]]
    assert str(failed.value) == "broken on purpose" and "Traceback" in failed.value.__notes__[0]  # where it happened, and how
    manifest = json.loads((out / "explodes" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == {"step": "boom", "message": "broken on purpose"}
    evaluated = manifest["steps"]["fp32-eval"]
    assert (out / ".cache" / "evaluate" / evaluated["key"] / "handle.json").is_file()  # the step beside it is not lost


def test_input_folders_are_whole_cache_entries_and_outer_folders(sequential):
    first, _, out = sequential
    cache = (out / ".cache").resolve()
    evaluated = first.outputs["openvino-int8-eval"]
    folders = input_folders({"model": evaluated}, cache)
    entries = {f.relative_to(cache).parts[0] for f in folders if f.is_relative_to(cache)}
    assert entries == {"quantize", "evaluate", "finetune"}  # runtime files, predictions, the source model's folder
    assert all(len(f.relative_to(cache).parts) == 2 for f in folders if f.is_relative_to(cache))
