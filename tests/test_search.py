"""The joint architecture + precision search: genome, fake quantization, store, the search and select passes."""
from __future__ import annotations

import json
import random
import sqlite3
import subprocess

from io import StringIO

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from conftest import cli_run_command, kill_when
from tailorfit.pipeline import run_pipeline
from tailorfit.pipeline.errors import StepSkipped, TailorfitError
from tailorfit.pipeline.search.store import EvaluationStore
from tailorfit.pipeline.search.fake_quant import simulated_policy
from tailorfit.pipeline.families import family_by_name
from tailorfit.pipeline.search.genome import Genome
from tailorfit.pipeline.cli import main
from tailorfit.pipeline.inspect_run import print_run
from tailorfit.pipeline.run_summary import run_summary
from tailorfit.pipeline.models.policy import QuantizationPolicy
from tailorfit.pipeline.supernet.space import LayerChoice, SearchSpace, SubnetConfig

SPACE = SearchSpace(num_layers=4, hidden_size=32, num_heads=4, num_kv_heads=4, head_dim=8, ffn_size=64,
                    head_choices=[1, 2, 4], ffn_choices=[0, 32, 64], min_layers=2)


def test_genome_round_trips_and_canonicalises():
    genome = Genome(SPACE)
    lower, upper = genome.bounds()
    assert len(lower) == genome.length == 1 + 4 * 6 + 1
    rng = np.random.default_rng(0)
    for _ in range(200):
        g = rng.integers(lower, upper + 1)
        canon = genome.canonical(g)
        assert (genome.canonical(canon) == canon).all()
        candidate = genome.decode(g)
        assert candidate == genome.decode(canon) and candidate.id == genome.candidate_id(canon)
        SPACE.check(candidate.subnet)
        kept = candidate.subnet.kept()
        assert len(kept) >= SPACE.min_layers
        resolved = candidate.policy.resolve(len(kept))
        assert (genome.encode(candidate.subnet, resolved) == canon).all()
    with pytest.raises(TailorfitError, match="another search space"):
        genome.decode(np.zeros(genome.length + 1, dtype=int))


def test_irrelevant_genes_do_not_make_a_new_candidate():
    genome = Genome(SPACE)  # positional drop order [2, 1, 0, 3]: depth 3 drops layer 2
    rows = np.array([[2, 2, 1, 1, 1, 1]] * 4)
    rows[1] = [2, 0, 1, 1, 1, 1]  # layer 1 without FFN: its FFN precisions cannot matter
    a = np.concatenate([[1], rows.reshape(-1), [1]])
    rows[2] = [0, 1, 0, 1, 0, 1]  # layer 2 dropped: its genes cannot matter
    rows[1] = [2, 0, 1, 1, 0, 0]
    b = np.concatenate([[1], rows.reshape(-1), [1]])
    assert genome.decode(a).id == genome.decode(b).id
    candidate = genome.decode(a)
    # the extracted model renumbers kept layers: super-network layer 3 becomes layer 2
    assert candidate.subnet.kept() == [0, 1, 3]
    assert candidate.policy.resolve(3)["2.qkv"] == "int8" and candidate.policy.resolve(3)["head"] == "int8"


def test_the_depth_gene_drops_the_least_influential_layers_first():
    space = SPACE.model_copy(update={"drop_order": [1, 3, 0, 2]})
    genome = Genome(space)
    kept = [genome.decode(np.concatenate([[d], np.zeros(genome.length - 1, dtype=int)])).subnet.kept() for d in range(3)]
    assert kept == [[0, 2], [0, 2, 3], [0, 1, 2, 3]]
    assert [i for i, c in enumerate(space.smallest().layers) if c.keep] == [0, 2]
    with pytest.raises(TailorfitError, match="drop order"):  # a sub-network the depth gene cannot express
        genome.encode(SubnetConfig(layers=[LayerChoice(keep=i != 2, heads=4, ffn=64) for i in range(4)]), QuantizationPolicy().resolve(3))
    with pytest.raises(ValueError, match="each of the 4 layers once"):
        SearchSpace(**SPACE.model_dump() | {"drop_order": [1, 1, 0, 2]})


def test_the_smallest_depth_keeps_an_even_spread_of_layers_when_none_were_measured():
    genome = Genome(SPACE)
    g = np.zeros(genome.length, dtype=int)
    assert genome.decode(g).subnet.kept() == [i for i, c in enumerate(SPACE.smallest().layers) if c.keep] == [0, 3]


def test_simulated_policy_fake_quantizes_only_int8_groups_and_restores_weights(bert_classifier):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(bert_classifier).eval()
    family = family_by_name("bert")
    before = {n: p.clone() for n, p in model.named_parameters()}
    x = torch.randint(5, 30, (2, 12))
    with torch.no_grad():
        ref = model(input_ids=x).logits
        policy = {"0.qkv": "int8", "0.attn_out": "fp32", "0.ffn_up": "fp32", "0.ffn_down": "fp32", "head": "fp32"}
        policy |= {f"1.{g}": "fp32" for g in ("qkv", "attn_out", "ffn_up", "ffn_down")}
        with simulated_policy(model, family, policy) as count:
            quantized = model(input_ids=x).logits
        assert count == 3  # query, key, value of layer 0
        assert not torch.equal(quantized, ref) and torch.allclose(quantized, ref, atol=0.1)
        assert torch.equal(model(input_ids=x).logits, ref)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_the_store_refuses_another_layout_and_keeps_records_in_order(tmp_path):
    genome = Genome(SPACE)
    store = EvaluationStore(tmp_path / "e.sqlite", genome.fingerprint())
    rng = np.random.default_rng(1)
    ids = []
    for i in range(3):
        g = genome.canonical(rng.integers(*genome.bounds()))
        candidate = genome.decode(g)
        store.add(candidate, g.tolist(), {"accuracy": i / 10}, 1.0)
        ids.append(candidate.id)
    with pytest.raises(sqlite3.IntegrityError):  # one row per candidate, ever
        store.add(genome.decode(g), g.tolist(), {}, 1.0)
    store.close()
    reopened = EvaluationStore(tmp_path / "e.sqlite", genome.fingerprint())
    assert [r["id"] for r in reopened.records()] == ids and reopened.get(ids[1])["metrics"] == {"accuracy": 0.1}
    reopened.close()
    with pytest.raises(TailorfitError, match="another search space"):
        EvaluationStore(tmp_path / "e.sqlite", Genome(SPACE, ("fp32",)).fingerprint())


def test_the_store_refuses_measurements_of_another_supernet_or_settings(tmp_path):
    """A store is a search's memory: answering a search with another super-network's accuracies would be silent nonsense."""
    genome = Genome(SPACE)
    g = genome.canonical(np.random.default_rng(0).integers(*genome.bounds()))
    measured = {"supernet": "a1", "data": "d1", "target": "openvino-cpu", "threads": 2}
    store = EvaluationStore(tmp_path / "e.sqlite", genome.fingerprint(), measured)
    store.add(genome.decode(g), g.tolist(), {"accuracy": 0.5}, 1.0)
    store.close()
    EvaluationStore(tmp_path / "e.sqlite", genome.fingerprint(), measured).close()  # the same search resumes
    with pytest.raises(TailorfitError, match=r"holds measurements of something else \(supernet a1 vs b2; threads 2 vs 1\)"):
        EvaluationStore(tmp_path / "e.sqlite", genome.fingerprint(), {**measured, "supernet": "b2", "threads": 1})
    older = EvaluationStore(tmp_path / "old.sqlite", genome.fingerprint())  # written before stores recorded this
    older.add(genome.decode(g), g.tolist(), {"accuracy": 0.5}, 1.0)
    older.close()
    with pytest.raises(TailorfitError, match="no record of which super-network"):
        EvaluationStore(tmp_path / "old.sqlite", genome.fingerprint(), measured)


def test_select_rules_pick_from_the_front_and_skip_when_nothing_qualifies():
    from tailorfit.passes.select import Select, SelectConfig

    def row(cid, acc_change, latency_ratio, size, acc):
        return {"id": cid, "metrics": {"accuracy_change_vs_fp32": {"difference": acc_change}, "latency_ratio": latency_ratio, "size_mb": size, "accuracy": acc}}

    front = [row("a", 0.0, 1.0, 80, 0.85), row("b", -0.005, 0.6, 40, 0.845), row("c", -0.02, 0.3, 30, 0.83), row("d", -0.15, 0.25, 10, 0.70)]
    pick = lambda **c: Select(SelectConfig(**c))._pick(front)["id"]  # noqa: E731
    assert pick(rule="fastest", max_accuracy_drop=1.0) == "b"
    assert pick(rule="fastest", max_accuracy_drop=2.0) == "c"
    assert pick(rule="smallest", max_accuracy_drop=None) == "d"
    assert pick(rule="most_accurate") == "a"
    assert pick(rule="knee") == "c"
    with pytest.raises(StepSkipped, match="within 0.1 accuracy points"):
        Select(SelectConfig(rule="fastest", max_accuracy_drop=0.1))._pick([front[2], front[3]])
    with pytest.raises(StepSkipped, match="no candidate meeting its constraints"):
        Select(SelectConfig())._pick([])


def _search_recipe(model, data, name="search", **search) -> dict:
    config = {"budget": 8, "initial": 6, "batch": 2, "inner_generations": 10, "inner_population": 24, "sequence_length": 24,
              "calibration_samples": 8, "latency_runs": 10, **search}
    branch = lambda rule, **c: [  # noqa: E731
        {"id": rule, "pass": "select", "inputs": {"search": "search"}, "config": {"rule": rule, **c}},
        {"id": f"{rule}-ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
        {"id": f"{rule}-int8", "pass": "quantize", "config": {"policy": "selected", "calibration_samples": 8, "max_length": 24}},
        {"id": f"{rule}-eval", "pass": "evaluate", "config": {"max_length": 24, "bootstrap": 200}},
        {"id": f"{rule}-bench", "pass": "benchmark", "config": {"sequence_lengths": [16], "runs": 50, "warmup": 2, "attempts": 1}},
    ]
    return {"name": name, "seed": 0, "threads": 2, "steps": [
        {"id": "model", "pass": "load", "config": {"path": str(model), "task": "text-classification", "name": "tiny"}},
        {"id": "data", "pass": "dataset", "config": {"path": str(data)}},
        {"id": "ft", "pass": "finetune", "config": {"max_steps": 60, "batch_size": 16, "max_length": 24, "learning_rate": 3e-3}},
        {"id": "ov-fp32", "pass": "lower", "inputs": {"model": "ft"}, "config": {"target": "openvino-cpu"}},
        {"id": "ov-fp32-eval", "pass": "evaluate", "config": {"max_length": 24, "bootstrap": 200}},
        {"id": "supernet", "pass": "supernet", "inputs": {"model": "ft"}, "config": {"ffn_step": 16}},
        {"id": "search", "pass": "search", "config": config},
        *branch("fastest", max_accuracy_drop=100.0), *branch("knee"),
        {"id": "package", "pass": "package"},
    ]}


@pytest.fixture(scope="module")
def searched(tiny_bert, sentences_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    return run_pipeline(_search_recipe(tiny_bert, sentences_csv), out=out, quiet=True), out


def test_a_quick_search_measures_reports_and_packages_its_picks(searched):
    result, _ = searched
    search = result.outputs["search"]
    for name in ("evaluations.sqlite", "pareto.csv", "pareto.json", "history.json", "estimate_vs_target.json", "pareto.png", "pareto.html", "hypervolume.png"):
        assert (search.path / name).is_file(), name
    store = sqlite3.connect(search.path / "evaluations.sqlite")
    roles = [r[0] for r in store.execute("SELECT role FROM candidates ORDER BY position")]
    assert roles[:2] == ["baseline", "baseline"] and roles.count("search") >= 6  # a baseline the search proposes is not measured twice
    ids = [r[0] for r in store.execute("SELECT id FROM candidates")]
    assert len(ids) == len(set(ids))
    history = json.loads((search.path / "history.json").read_text())
    assert history["measured"] == len(ids) and len(history["hypervolume_curve"]) == 8
    assert [h for _, h in history["hypervolume_curve"]] == sorted(h for _, h in history["hypervolume_curve"])
    assert history["iterations"][-1]["predictors"]  # LINAS fitted a predictor per objective
    assert search.front and all(r["metrics"]["latency_ms"] > 0 and r["metrics"]["latency_ratio"] > 0 for r in search.front)
    # the FP32 baseline is timed against an identical copy of itself: its ratio is 1 up to noise
    assert 0.7 < search.baselines["fp32"]["metrics"]["latency_ratio"] < 1.4
    fp32 = search.baselines["fp32"]["metrics"]
    # the search measured the unpruned FP32 model like the pipeline does: same validation accuracy on OpenVINO
    assert fp32["params"] == max(r["metrics"]["params"] for r in search.front + [search.baselines["fp32"]])
    packaged = json.loads((result.run_dir / "metrics.json").read_text())
    picked = [c for c in packaged.values() if "selection" in c]
    assert len(picked) == 2
    for entry in picked:
        measured = entry["targets"]["openvino-cpu"]
        assert entry["selection"]["search_metrics"]["split"] == "validation" and "accuracy" in measured and "latency" in measured
        kept = sum(c["keep"] for c in entry["selection"]["subnet"]["layers"])
        assert measured["params"] == entry["selection"]["search_metrics"]["params"] and kept >= 1
        versus = measured["versus"]["fp32"]  # the unpruned model the super-network came from
        assert versus["candidate"] == "tiny-fp32" and versus["accuracy_change"]["n"] == 40 and versus["size_ratio"] > 0
    assert (result.run_dir / "search" / "search" / "pareto.csv").is_file() and (result.run_dir / "search" / "search" / "evaluations.sqlite").is_file()
    shown = StringIO()
    print_run(result.run_dir, Console(file=shown, width=300))
    assert "search 'search': linas, " in shown.getvalue() and search.front[0]["id"] in shown.getvalue()
    summary = run_summary(result.run_dir)
    assert summary["exit_code"] == 0 and summary["status"] == "done" and summary["steps"]["search"]["state"] in ("ran", "cached")
    assert sorted(name for name, c in summary["candidates"].items() if c["from_search"]) == sorted(n for n, c in packaged.items() if "selection" in c)


def test_a_constraint_nobody_meets_packages_nothing_and_says_so(searched, tiny_bert, sentences_csv, capsys):
    result, out = searched
    store = result.outputs["search"].path / "evaluations.sqlite"
    rows_before = sqlite3.connect(store).execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
    recipe = _search_recipe(tiny_bert, sentences_csv, name="impossible", store=str(store), budget=6, max_latency_ms=1e-6)
    second = run_pipeline(recipe, out=out, quiet=True)
    steps = second.manifest["steps"]
    assert second.manifest["status"] == "finished"
    assert "no candidate meeting its constraints" in steps["fastest"]["skipped"] and "skipped" in steps["fastest-bench"]
    assert second.outputs["package"].candidates == ["tiny-fp32"]
    shown = StringIO()
    print_run(second.run_dir, Console(file=shown, width=300))
    assert "skipped: its input 'model' comes from skipped step(s) fastest" in shown.getvalue()
    # a pipeline step learns it from the exit code and one JSON on stdout
    (out / "impossible.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(out / "impossible.yaml"), "--out", str(out), "--json", "--quiet"]) == 3
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "no candidate met the constraints" and summary["steps"]["fastest"]["state"] == "skipped"
    assert summary["steps"]["search"]["state"] == "cached" and list(summary["candidates"]) == ["tiny-fp32"]
    packaged = json.loads((second.run_dir / "metrics.json").read_text())["tiny-fp32"]["targets"]["openvino-cpu"]
    assert summary["candidates"]["tiny-fp32"]["targets"]["openvino-cpu"]["accuracy"] == packaged["accuracy"]
    # every candidate came from the warm-start store: nothing was measured again, not even the latency table
    assert sqlite3.connect(store).execute("SELECT COUNT(*) FROM candidates").fetchone()[0] == rows_before
    tables = [json.loads((r.outputs["search"].path / "latency_table.json").read_text()) for r in (result, second)]
    assert tables[0] == tables[1]  # timing it again would give other medians


def test_bad_search_configs_fail_in_one_line(tiny_bert, sentences_csv, tmp_path):
    for search, match in (({"budget": 0}, "budget"), ({"objectives": ["accuracy", "perplexity"]}, "objectives"),
                          ({"budget": 4, "initial": 6}, "exceeds the budget"),
                          ({"accuracy_from": "supernet", "estimate": False}, "needs estimate: true")):
        with pytest.raises(TailorfitError, match=match):
            run_pipeline(_search_recipe(tiny_bert, sentences_csv, **search), out=tmp_path, quiet=True)


def test_a_killed_search_resumes_from_its_store(tiny_bert, sentences_csv, tmp_path):
    recipe = _search_recipe(tiny_bert, sentences_csv, budget=9, initial=5, batch=2)
    recipe["steps"] = [s for s in recipe["steps"] if s["id"] in ("model", "data", "ft", "supernet", "search")]
    cmd = cli_run_command(recipe, tmp_path)
    cache = tmp_path / "out" / ".cache" / "search"

    def stored() -> list[tuple]:
        found = list(cache.glob("*.partial/evaluations.sqlite")) + list(cache.glob("*/evaluations.sqlite"))
        if not found:
            return []
        try:
            return sqlite3.connect(found[0]).execute("SELECT id, measured_at, seconds FROM candidates ORDER BY position").fetchall()
        except sqlite3.OperationalError:
            return []

    kill_when(cmd, lambda: len(stored()) >= 5)
    before = stored()
    assert 5 <= len(before) < 11, "the kill came too late: the search had finished"
    assert not [p for p in cache.iterdir() if not p.name.endswith(".partial")]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    after = stored()
    assert after[:len(before)] == before  # what was finished before the kill was kept, not measured again
    assert len({r[0] for r in after}) == len(after) and sum(1 for r in after) >= 9


def test_linas_search_runs_deterministically_given_the_same_measurements():
    """The resume above relies on this: replaying with stored values retraces the same candidates."""
    from tailorfit.pipeline.search.multiobjective import IntegerProblem, SearchSettings, run_search

    genome = Genome(SPACE)
    problem = IntegerProblem(*genome.bounds(), n_obj=2, canonical=genome.canonical)
    rng = random.Random(0)
    values: dict[tuple, tuple[float, float]] = {}

    def measure(X):
        F = []
        for g in X:
            key = tuple(g)
            values.setdefault(key, (rng.random(), sum(g) + rng.random()))
            F.append(values[key])
        return np.array(F), np.zeros((len(X), 0))

    settings = SearchSettings(budget=12, initial=6, batch=3, inner_generations=10, inner_population=20)
    first = run_search(problem, measure, settings)
    second = run_search(problem, measure, settings)
    assert (first.X == second.X).all() and len(first.X) == 12


def test_sampled_genomes_are_canonical_and_spread_by_depth_or_near_the_unpruned_model():
    genome = Genome(SPACE)
    rng = np.random.default_rng(0)
    near = genome.sample(rng, 300, near_largest=1.0)
    changed = []
    for g in near:
        assert (genome.canonical(g) == g).all()
        layers = genome.decode(g).subnet.layers
        # every layer is the unpruned one or one step narrower in heads or FFN; at most a few layers are dropped
        assert all(not c.keep or (c.heads, c.ffn) in {(4, 64), (2, 64), (4, 32)} for c in layers)
        changed.append(sum(c.keep and (c.heads, c.ffn) != (4, 64) for c in layers) + 4 - sum(c.keep for c in layers))
    assert 0.7 < np.mean(changed) < 1.3  # one change in expectation
    depths = np.array([len(genome.decode(g).subnet.kept()) for g in genome.sample(rng, 300, near_largest=0.0)])
    assert all(60 < (depths == d).sum() < 140 for d in (2, 3, 4))  # depth uniform over min_layers..layers


def test_a_search_killed_mid_batch_redoes_at_most_the_candidate_in_flight(tiny_bert, sentences_csv, tmp_path):
    """Killed while its first batch is being built, a search resumed from its folder builds none of the candidates it
    had finished building again: their build timings in the store are the ones kept before the kill."""
    import pickle

    recipe = _search_recipe(tiny_bert, sentences_csv, budget=6, initial=5, batch=1)
    recipe["steps"] = [s for s in recipe["steps"] if s["id"] in ("model", "data", "ft", "supernet", "search")]
    cmd = cli_run_command(recipe, tmp_path)
    built = tmp_path / "out" / ".cache" / "search"
    kill_when(cmd, lambda: len(list(built.glob("*.partial/built/*.pkl"))) >= 2)
    kept = {p.stem: pickle.loads(p.read_bytes()).metrics["seconds_by_stage"] for p in built.glob("*.partial/built/*.pkl")}
    assert len(kept) >= 2, "the kill came too late or too early"
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    store = next(built.glob("*/evaluations.sqlite"))
    rows = {cid: json.loads(m)["seconds_by_stage"] for cid, m in sqlite3.connect(store).execute("SELECT id, metrics FROM candidates")}
    for cid, stages in kept.items():  # the same build, timed after the resume: not measured again
        assert {k: v for k, v in rows[cid].items() if k != "latency"} == stages
    assert not list(built.glob("*/built"))  # nothing waiting is left in the finished entry
