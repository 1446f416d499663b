"""The search's per-layer latency table: what it covers, what it estimates, how LINAS uses an estimate, and the
table a real search times on OpenVINO (lowered and quantized by the target), records, and keeps across a kill."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import cli_run_command, kill_when
from tailorfit.pipeline.models.policy import QuantizationPolicy
from tailorfit.pipeline.search.genome import Candidate, Genome
from tailorfit.pipeline.search.latency_table import BlockShapes, TimedBlocks, build_table, table_specs
from tailorfit.pipeline.search.multiobjective import IntegerProblem, SearchSettings, fit_predictor, run_search
from tailorfit.pipeline.supernet.space import LayerChoice, SearchSpace, SubnetConfig

SPACE = SearchSpace(num_layers=4, hidden_size=32, num_heads=4, num_kv_heads=4, head_dim=8, ffn_size=64,
                    head_choices=[1, 2, 4], ffn_choices=[0, 32, 64], min_layers=2)
SHAPES = BlockShapes(hidden=32, head_dim=8, group_size=1, qkv_linears=3, up_linears=1, sequence_length=16)


def test_the_table_has_one_entry_per_block_shape_and_precision_pair():
    specs = table_specs(SPACE, ("fp32", "int8"))
    keys = {(s.block, s.width, tuple(s.precisions.items())) for s in specs}
    assert len(keys) == len(specs) == 3 * 4 + 2 * 4  # a removed FFN (width 0) has no block to time
    assert ("attention", 2, (("qkv", "int8"), ("attn_out", "fp32"))) in keys
    assert ("ffn", 64, (("ffn_up", "fp32"), ("ffn_down", "int8"))) in keys
    assert not any(s.quantized for s in table_specs(SPACE, ("fp32",))) and len(table_specs(SPACE, ("fp32",))) == 5


def _table(noise: float = 0.0):
    """A table from made-up timings: attention 0.1 ms per head, FFN 0.01 ms per neuron, int8 taking a quarter off per
    linear, 0.05 ms per model call, and a reference 1 ms slower than its layers."""
    specs = table_specs(SPACE, ("fp32", "int8"))
    rng = np.random.default_rng(0)

    def ms(s):
        base = 0.1 * s.width if s.block == "attention" else 0.01 * s.width
        return base * (1 - 0.25 * sum(p == "int8" for p in s.precisions.values())) + 0.05 + noise * rng.standard_normal()

    layer = 0.1 * 4 + 0.01 * 64
    timed = TimedBlocks(median_ms=[ms(s) for s in specs], runtime_precisions=[s.precisions for s in specs], largest_layer_ms=layer + 0.05,
                        reference_ms=4 * layer + 1.0, seconds=1.0)
    return build_table(specs, timed, SPACE, SHAPES, {"supernet": "k"})


def _candidate(layers: list[tuple[int, int]], int8: dict[str, str] | None = None) -> Candidate:
    keep = [(True, h, f) for h, f in layers] + [(False, 1, 0)] * (SPACE.num_layers - len(layers))
    subnet = SubnetConfig(layers=[LayerChoice(keep=k, heads=h, ffn=f) for k, h, f in keep])
    return Candidate(id="x", subnet=subnet, policy=QuantizationPolicy(default="fp32", layers=int8 or {}))


def test_the_estimate_grows_with_layers_and_widths_and_shrinks_with_int8():
    table = _table()
    est = table.estimate_ms
    assert table.call_ms == pytest.approx(0.05) and table.fixed_ms == pytest.approx(1.0) and table.estimate_ratio(_candidate([(4, 64)] * 4), SPACE) == pytest.approx(1.0)
    assert est(_candidate([(4, 64)] * 3)) < est(_candidate([(4, 64)] * 4))
    assert est(_candidate([(4, 32)] * 3)) < est(_candidate([(4, 64)] * 3))
    assert est(_candidate([(2, 64)] * 3)) < est(_candidate([(4, 64)] * 3))
    assert est(_candidate([(4, 0)] * 3)) < est(_candidate([(4, 32)] * 3))
    assert est(_candidate([(4, 64)] * 3, {"1.ffn_up": "int8"})) < est(_candidate([(4, 64)] * 3))
    # the policy is numbered over kept layers: which one is int8 does not matter when they are alike
    assert est(_candidate([(4, 64)] * 3, {"0.qkv": "int8"})) == pytest.approx(est(_candidate([(4, 64)] * 3, {"2.qkv": "int8"})))


def test_noisy_timings_still_give_a_wider_block_at_least_the_narrower_ones_time():
    table = _table(noise=0.3)  # larger than the gaps between widths: raw medians are out of order
    raw = {(e.block, e.width, tuple(e.precisions.values())): e.median_ms for e in table.entries}
    assert any(raw["attention", 1, p] > raw["attention", 2, p] or raw["attention", 2, p] > raw["attention", 4, p] for p in
               [("fp32", "fp32"), ("int8", "fp32"), ("fp32", "int8"), ("int8", "int8")])
    for block, widths in (("attention", [1, 2, 4]), ("ffn", [32, 64])):
        for pair in {tuple(e.precisions.values()) for e in table.entries if e.block == block}:
            ms = [next(e.ms for e in table.entries if (e.block, e.width, tuple(e.precisions.values())) == (block, w, pair)) for w in widths]
            assert ms == sorted(ms) and min(ms) >= 0


def _problem(estimate=None):
    genome = Genome(SPACE)
    cost = lambda X: np.array([sum(c.heads + c.ffn / 16 for c in genome.decode(g).subnet.layers if c.keep) for g in X])  # noqa: E731
    problem = IntegerProblem(*genome.bounds(), n_obj=2, canonical=genome.canonical, estimates={"f1": estimate or cost})

    def measure(X):
        return np.column_stack([-np.asarray(X).sum(axis=1), cost(X)]), np.zeros((len(X), 0))

    return problem, measure, cost


def test_linas_fits_the_latency_column_on_its_estimate_and_records_both_qualities():
    problem, measure, _ = _problem()
    history = run_search(problem, measure, SearchSettings(budget=14, initial=8, batch=3, inner_generations=5, inner_population=20))
    first, later = history.iterations[0], history.iterations[1:]
    assert first.estimates["f1"]["batch_kendall_tau"] == pytest.approx(1.0) and first.estimates["f1"]["batch_mape"] == pytest.approx(0.0)
    assert "f0" not in first.estimates and later
    for it in later:
        used = it.predictors["f1"]
        assert "estimate" in used["model"] and used["cv_mae"] == pytest.approx(0.0, abs=1e-6)
        assert used["batch_mape"] == pytest.approx(0.0, abs=1e-6) and it.estimates["f1"]["batch_mape"] == pytest.approx(0.0)
        assert "estimate" not in it.predictors["f0"]["model"]  # a column without an estimate is fitted on the genome only


def test_an_estimate_that_carries_no_information_is_not_what_the_predictor_becomes():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 3, size=(24, 6))
    y = X @ np.array([1.0, 2.0, 0.5, 0.0, 3.0, 1.0])
    _, info = fit_predictor(X, y, seed=0, estimate=rng.random(24))
    assert info["model"] not in ("estimate", "estimate_affine")
    _, info = fit_predictor(X, y, seed=0, estimate=y + 0.01 * rng.standard_normal(24))
    assert "estimate" in info["model"]


def test_an_estimate_for_a_column_the_problem_lacks_is_refused():
    problem, measure, cost = _problem()
    wrong = IntegerProblem(problem.lower, problem.upper, n_obj=2, canonical=problem.canonical, estimates={"g0": cost})
    with pytest.raises(ValueError, match=r"columns \['g0'\]"):
        run_search(wrong, measure, SearchSettings(budget=4, initial=2))


def _recipe(model, data) -> dict:
    search = {"budget": 7, "initial": 4, "batch": 3, "inner_generations": 10, "inner_population": 24, "sequence_length": 24,
              "calibration_samples": 8, "latency_runs": 10}
    return {"name": "table", "seed": 0, "threads": 2, "steps": [
        {"id": "model", "pass": "load", "config": {"path": str(model), "task": "text-classification", "name": "tiny"}},
        {"id": "data", "pass": "dataset", "config": {"path": str(data)}},
        {"id": "ft", "pass": "finetune", "config": {"max_steps": 20, "batch_size": 16, "max_length": 24, "learning_rate": 3e-3}},
        {"id": "supernet", "pass": "supernet", "inputs": {"model": "ft"}, "config": {"ffn_step": 16}},
        {"id": "search", "pass": "search", "config": search},
    ]}


@pytest.fixture(scope="module")
def killed_and_resumed(tiny_bert, sentences_csv, tmp_path_factory):
    """A search killed as soon as its table is written, then resumed: (the table before the kill, the finished step's folder)."""
    folder = tmp_path_factory.mktemp("table")
    cmd = cli_run_command(_recipe(tiny_bert, sentences_csv), folder)
    cache = folder / "out" / ".cache" / "search"
    tables = lambda: list(cache.glob("*.partial/latency_table.json"))  # noqa: E731
    kill_when(cmd, lambda: bool(tables()))
    assert tables(), "the search never wrote its latency table"
    before = tables()[0].read_text()
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    [done] = [p for p in cache.iterdir() if not p.name.endswith(".partial")]
    return json.loads(before), done


def test_the_table_is_timed_with_the_targets_own_quantization(killed_and_resumed):
    table, _ = killed_and_resumed
    supernet_space = {(e["block"], e["width"], tuple(e["precisions"].values())) for e in table["entries"]}
    assert len(supernet_space) == len(table["entries"]) and len(table["entries"]) > 8
    for e in table["entries"]:
        assert e["runtime_precisions"] == e["precisions"], e  # what OpenVINO runs after NNCF, read back, is what the entry claims
        assert e["median_ms"] > 0 and e["ms"] >= 0
    assert table["reference_ms"] > 0 and table["measured"]["target"] == "openvino-cpu" and table["measured"]["sequence_length"] == 24


def test_a_resumed_search_reads_its_table_back_instead_of_timing_it_again(killed_and_resumed):
    table, done = killed_and_resumed
    assert json.loads((done / "latency_table.json").read_text()) == table  # timing again would give other medians


def test_history_records_the_tables_quality_beside_the_predictor_in_use(killed_and_resumed):
    _, done = killed_and_resumed
    history = json.loads((done / "history.json").read_text())
    latency = f"f{history['objectives'].index('latency')}"
    iterations = history["iterations"]
    assert len(iterations) >= 2 and all(set(it["estimates"]) == {latency} for it in iterations)
    assert all(it["estimates"][latency]["batch_mape"] is not None for it in iterations)
    for it in iterations[1:]:
        assert {"model", "cv_mae", "batch_mape", "batch_kendall_tau"} <= set(it["predictors"][latency])
    overall = history["column_estimates"][latency]
    assert overall["candidates"] == len(history["hypervolume_curve"]) and overall["mape"] is not None  # every candidate the search measured
