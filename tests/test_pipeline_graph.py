"""Recipes are validated completely before anything runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from tailorfit.pipeline import Pipeline, TailorfitError, load_recipe
from tailorfit.pipeline.contract import all_passes


def build(steps, **extra):
    recipe, _ = load_recipe({"name": "t", "steps": steps, **extra})
    return Pipeline(recipe)


def test_every_pass_declares_config_ports_output_and_docstring():
    import sys

    passes = all_passes()
    assert {"load", "dataset", "finetune", "lower", "quantize", "evaluate", "benchmark", "package"} <= set(passes)
    for name, cls in passes.items():
        assert cls.produces().kind
        assert "Consumes" in sys.modules[cls.__module__].__doc__ and "Produces" in sys.modules[cls.__module__].__doc__, name


def test_auto_wiring_follows_branches(tiny_bert, sentences_csv):
    pipe = build([
        {"id": "m", "pass": "load", "config": {"path": str(tiny_bert)}},
        {"id": "d", "pass": "dataset", "config": {"path": str(sentences_csv)}},
        {"id": "ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
        {"id": "ov-e", "pass": "evaluate"},
        {"id": "ort", "pass": "lower", "inputs": {"model": "m"}, "config": {"target": "onnxruntime-cpu"}},
        {"id": "ort-q", "pass": "quantize"},
        {"id": "pkg", "pass": "package"},
    ])
    nodes = pipe.nodes
    assert nodes["ov"].wiring == {"model": ["m"]}
    assert nodes["ov-e"].wiring == {"model": ["ov"], "data": ["d"]}
    assert nodes["ort-q"].wiring == {"model": ["ort"], "data": ["d"]}
    assert sorted(nodes["pkg"].wiring["models"]) == ["ort-q", "ov-e"]  # the last handle of each branch
    assert pipe.order.index("pkg") == len(pipe.order) - 1


@pytest.mark.parametrize(
    "steps, message",
    [
        ([{"pass": "shrink"}], "unknown pass 'shrink'"),
        ([{"pass": "dataset", "config": {"path": "x.csv", "fractions": "many"}}], "field 'fractions'"),
        ([{"pass": "dataset", "config": {"path": "x.csv", "colour": 1}}], "field 'colour'"),
        ([{"pass": "evaluate"}], "needs a Lowered input but no earlier step produces one"),
        ([{"pass": "lower", "config": {"target": "tpu"}}], "unknown target 'tpu'"),
        ([{"pass": "extract"}], "field 'subnet': Field required"),
        ([{"id": "a", "pass": "lower", "inputs": {"model": "nope"}, "config": {"target": "openvino-cpu"}}], "'nope', which is not a step id"),
        ([{"id": "a", "pass": "load", "config": {"path": "/nonexistent/model"}}, {"id": "a", "pass": "load", "config": {"path": "/x"}}], "two recipe steps have the id 'a'"),
    ],
)
def test_malformed_recipes_fail_at_load(steps, message):
    with pytest.raises(TailorfitError, match=message):
        build(steps)


def test_cycle_is_caught():
    steps = [
        {"id": "a", "pass": "evaluate", "inputs": {"model": "b", "data": "b"}},
        {"id": "b", "pass": "evaluate", "inputs": {"model": "a", "data": "a"}},
    ]
    with pytest.raises(TailorfitError, match="needs a Dataset but step 'b' produces a Lowered"):
        build(steps)
    steps = [
        {"id": "q1", "pass": "benchmark", "inputs": {"model": "q2"}},
        {"id": "q2", "pass": "benchmark", "inputs": {"model": "q1"}},
    ]
    with pytest.raises(TailorfitError, match="cycle"):
        build(steps)


def test_input_of_wrong_kind_is_caught(tiny_bert):
    with pytest.raises(TailorfitError, match="needs a Lowered but step 'm' produces a HFModel"):
        build([{"id": "m", "pass": "load", "config": {"path": str(tiny_bert)}}, {"pass": "benchmark", "inputs": {"model": "m"}}])


def test_model_problems_are_caught_before_running(tiny_bert, tmp_path):
    with pytest.raises(TailorfitError, match="model path '/nonexistent/model' does not exist"):
        build([{"pass": "load", "config": {"path": "/nonexistent/model"}}])
    with pytest.raises(TailorfitError, match="task 'causal-lm' does not fit a bert model"):
        build([{"pass": "load", "config": {"path": str(tiny_bert), "task": "causal-lm"}}])
    (tmp_path / "config.json").write_text('{"model_type": "mamba", "num_hidden_layers": 2}')
    with pytest.raises(TailorfitError, match="transformers has no text-classification model for the mamba architecture"):
        build([{"pass": "load", "config": {"path": str(tmp_path)}}])


def test_policy_naming_a_missing_layer_is_caught_before_running(tiny_bert, sentences_csv):
    steps = [
        {"id": "m", "pass": "load", "config": {"path": str(tiny_bert)}},
        {"id": "d", "pass": "dataset", "config": {"path": str(sentences_csv)}},
        {"id": "ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
        {"id": "q", "pass": "quantize", "config": {"policy": {"layers": {"7": "fp32"}}}},
    ]
    with pytest.raises(TailorfitError, match="names layer 7, but the model has 2 layers"):
        build(steps)


def test_force_matches_steps_and_passes(tiny_bert):
    pipe = build([
        {"id": "m", "pass": "load", "config": {"path": str(tiny_bert)}},
        {"id": "ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
        {"id": "b", "pass": "benchmark"},
    ])
    assert pipe.downstream(pipe.steps_matching("lower")) == {"ov", "b"}
    with pytest.raises(TailorfitError, match="matches no step"):
        pipe.steps_matching("distil")


def test_embedded_default_recipe_is_valid():
    recipe, _ = load_recipe(None)
    pipe = Pipeline(recipe)
    assert pipe.order[0] == "model" and pipe.order[-1] == "package"
    # the FP32 and INT8 baselines and the chosen finalist: the other finalists' branches end in choose
    assert pipe.nodes["package"].wiring["models"] == ["ov-fp32-bench", "ov-int8-bench", "fastest-bench"]


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("recipes/*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_parses_and_wires(path, made_data, monkeypatch):
    monkeypatch.chdir(made_data)  # where a recipe's relative data paths point
    recipe, _ = load_recipe(path)
    pipe = Pipeline(recipe)
    assert pipe.order and all(node in pipe.order for node in pipe.nodes)


def test_a_running_run_on_another_host_is_interrupted_once_its_heartbeat_stops(tmp_path):
    import os
    import time

    from tailorfit.pipeline.run_status import HEARTBEAT, STALE_SECONDS, effective_status

    manifest = {"status": "running", "process": {"host": "elsewhere", "pid": 1, "started": 0.0}, "order": ["a", "b"], "steps": {"a": {"seconds": 1.0}, "b": {}}}
    (tmp_path / HEARTBEAT).touch()
    assert effective_status(manifest, tmp_path)["status"] == "running"
    old = time.time() - STALE_SECONDS - 5
    os.utime(tmp_path / HEARTBEAT, (old, old))
    gone = effective_status(manifest, tmp_path)
    assert gone["status"] == "interrupted" and gone["last_finished_step"] == "a"
    assert effective_status({**manifest, "status": "finished"}, tmp_path)["status"] == "finished"


def _searching(model: Path, data: Path, supernet: dict | None = None, search: dict | None = None, quantize: dict | None = None) -> list[dict]:
    return [
        {"id": "m", "pass": "load", "config": {"path": str(model)}},
        {"id": "d", "pass": "dataset", "config": {"path": str(data)}},
        {"id": "ft", "pass": "finetune", "config": {"max_steps": 1}},
        {"id": "super", "pass": "supernet", "config": supernet or {}},
        {"id": "search", "pass": "search", "config": {"budget": 4, "initial": 2, **(search or {})}},
        {"id": "pick", "pass": "select", "config": {"rule": "fastest"}},
        {"id": "ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
        {"id": "q", "pass": "quantize", "config": quantize or {"policy": "selected"}},
    ]


def test_what_the_recipe_and_model_config_decide_fails_before_anything_runs(tiny_bert, sentences_csv, tmp_path):
    """Each of these used to fail only when its step ran, after minutes of fine-tuning in a real recipe."""
    not_sqlite = tmp_path / "store.sqlite"
    not_sqlite.write_text("id,accuracy\n")
    cases = [
        ({"supernet": {"head_choices": [5]}}, r"head choices \[5\] are not multiples .* up to 4"),
        ({"supernet": {"ffn_choices": [10_000]}}, r"FFN choices \[10000\] exceed the model's width"),
        ({"supernet": {"min_layers": 9}}, "min_layers 9 exceeds the model's 2 layers"),
        ({"search": {"precisions": ["int8"]}}, "precisions must include fp32"),
        ({"search": {"store": str(tmp_path / "missing" / "e.sqlite")}}, "folder .* does not exist"),
        ({"search": {"store": str(not_sqlite)}}, "is not an SQLite file"),
    ]
    for change, message in cases:
        with pytest.raises(TailorfitError, match=message):
            build(_searching(tiny_bert, sentences_csv, **change))
    build(_searching(tiny_bert, sentences_csv))  # and the same recipe without the fault is valid
    plain = [s for s in _searching(tiny_bert, sentences_csv) if s["pass"] not in ("supernet", "search", "select")]
    with pytest.raises(TailorfitError, match="comes from no select step"):
        build(plain)


@pytest.fixture(scope="module")
def made_data(tmp_path_factory) -> Path:
    """A folder holding the data the shipped recipes' headers say to make first."""
    folder = tmp_path_factory.mktemp("cwd")
    recipe_script("sentence_pairs").main(str(folder / "artifacts/data/rt-sentence-pairs.jsonl"))
    recipe_script("sentiment_share").main(str(folder / "artifacts/data/rt-sentiment-share.jsonl"))
    return folder


def recipe_script(name: str):
    """recipes/<name>.py, a script that makes a shipped recipe's data (recipes/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sentence_pairs_are_balanced_seeded_rewordings_or_other_sentences_of_the_same_sentiment():
    rows = [{"text": f"sentence number {i} of the test set", "label": i % 2} for i in range(400)]
    pairs = recipe_script("sentence_pairs").sentence_pairs(rows)
    assert pairs == recipe_script("sentence_pairs").sentence_pairs(rows) and len(pairs) == 400 and all(p["first"] != p["second"] for p in pairs)
    assert 160 < sum(p["label"] == "paraphrase" for p in pairs) < 240
    for p in pairs:
        first, second = p["first"].split(), p["second"].split()
        if p["label"] == "paraphrase":  # one word dropped, two neighbours swapped
            assert len(second) == len(first) - 1 and sorted(second) != sorted(first) and set(second) <= set(first)
        else:
            assert int(first[2]) % 2 == int(second[2]) % 2  # another sentence, of the same sentiment


def test_sentiment_share_deals_each_sentence_once_in_groups_labelled_by_their_positive_share():
    rows = [{"text": f"sentence {i}.", "label": i % 3 == 0} for i in range(400)]
    rows = [{**r, "label": "1" if r["label"] else "0"} for r in rows]
    groups = recipe_script("sentiment_share").sentiment_share(rows)
    assert groups == recipe_script("sentiment_share").sentiment_share(rows)
    used = [int(word) for g in groups for word in g["text"].replace(".", "").split() if word.isdigit()]
    assert sorted(used) == sorted(set(used)) and len(used) >= 395  # each sentence at most once; at most a last single one left out
    for g in groups:
        numbers = [int(w) for w in g["text"].replace(".", "").split() if w.isdigit()]
        assert 2 <= g["sentences"] == len(numbers) <= 5
        assert g["label"] == round(sum(n % 3 == 0 for n in numbers) / len(numbers), 4)
