"""The bench's own machinery on tiny inputs: report writing, the README section between markers, the matmul ceilings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report import BEGIN, END, latest_report, update_readme, write_report
from bench.sections import Section, run_section


def _report(tmp_path, name: str, date: str = "2026-01-02"):
    partial = tmp_path / f".{name}.partial"
    partial.mkdir(parents=True)
    (partial / "plot.png").write_bytes(b"png")
    meta = {
        "date": date, "quick": name.endswith("-quick"), "recipe": "recipes/default.yaml", "run_dir": "artifacts/x", "threads": 2,
        "command": "python -m bench", "seconds": 12.0, "packages": {"openvino": "1.0", "torch": "2.0", "absent": "not installed"},
        "host": {"cpu": "Test CPU 9000", "logical_cores": 2, "isa": ["avx2"], "python": "3.11", "platform": "Linux"},
    }
    sections = {"artifacts": Section("Artifact quality", "| a | b |\n| --- | --- |\n| 1 | 2 |", {"rows": [1, 2]}, [partial / "plot.png"], readme="short table")}
    return write_report(partial, tmp_path / name, meta, sections)


def test_report_folder_is_written_whole(tmp_path):
    folder = _report(tmp_path, "2026-01-02")
    assert not (tmp_path / ".2026-01-02.partial").exists()
    text = (folder / "report.md").read_text()
    assert "## 1. Artifact quality" in text and "Test CPU 9000" in text and "not installed" not in text
    data = json.loads((folder / "report.json").read_text())
    assert data["sections"]["artifacts"]["data"] == {"rows": [1, 2]} and data["sections"]["artifacts"]["plots"] == ["plot.png"]
    _report(tmp_path, "2026-01-02")  # a rerun the same day replaces the folder
    assert (tmp_path / "2026-01-02" / "plot.png").is_file()


def test_readme_section_is_rewritten_between_markers_from_the_latest_full_report(tmp_path):
    _report(tmp_path, "2026-01-02")
    _report(tmp_path, "2026-01-03", date="2026-01-03")
    _report(tmp_path, "2026-01-04-quick", date="2026-01-04")
    latest = latest_report(tmp_path)
    assert latest.parent.name == "2026-01-03"  # quick reports never feed the README
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\nbefore\n{BEGIN}\nold numbers\n{END}\nafter\n")
    assert update_readme(readme, latest)
    text = readme.read_text()
    assert text.startswith("# title\nbefore\n" + BEGIN) and text.endswith(END + "\nafter\n")
    assert "old numbers" not in text and "2026-01-03" in text and "Test CPU 9000" in text and "short table" in text
    assert "2026-01-03/report.md" in text
    assert update_readme(readme, latest) and readme.read_text() == text  # idempotent

    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not update_readme(plain, latest) and plain.read_text() == "no markers\n"


def test_readme_only_publishes_the_latest_full_report_into_docs_and_links_there(tmp_path, monkeypatch):
    from bench.__main__ import main

    monkeypatch.chdir(tmp_path)
    _report(tmp_path / "artifacts" / "bench", "2026-01-03", date="2026-01-03")
    Path("README.md").write_text(f"# title\n{BEGIN}\n{END}\n")
    assert main(["--readme-only"]) == 0
    assert (tmp_path / "docs" / "bench" / "2026-01-03" / "report.md").is_file()
    assert "[`docs/bench/2026-01-03/report.md`](docs/bench/2026-01-03/report.md)" in Path("README.md").read_text()
    assert main(["--readme-only"]) == 0 and not list((tmp_path / "docs" / "bench").glob(".*"))  # republished whole, nothing left half


def test_unknown_section_is_refused():
    with pytest.raises(SystemExit, match="unknown section"):
        run_section("nope", None)


def test_matmul_ceilings_run_in_their_precision():
    from bench.ceiling import CEILING, matmul_ceilings
    from tailorfit.targets.timing import measure_interleaved

    runs, executed = matmul_ceilings(threads=1)
    assert set(executed["int8"]) & {"i8", "u8"} and executed["f32"] == ["f32"]
    timed = measure_interleaved(runs, warmup=1, rounds=3, attempts=1)
    # bf16 only where the CPU has bf16 units (an AVX2-only CPU runs it in f32: no bf16 ceiling to hold entries to)
    assert set(timed.stats) == {CEILING + p for p in ("f32", "bf16", "int8") if p in executed} and {"f32", "int8"} <= set(executed)
    assert all(s.median_ms > 0 for s in timed.stats.values())


def _recipe_run(tmp_path):
    from bench.runs import RecipeRun
    from tailorfit.pipeline.cache import Cache
    from tailorfit.pipeline.models.handles import HFModel

    model = tmp_path / "tuned"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 6, "intermediate_size": 1536, "hidden_size": 384}))
    raw = {"name": "r", "steps": [
        {"id": "model", "pass": "load", "config": {"path": "x"}}, {"id": "data", "pass": "dataset", "config": {"path": "y"}},
        {"id": "tuned", "pass": "finetune"}, {"id": "sn", "pass": "supernet", "config": {"ffn_choices": [768, 1536], "min_layers": 4}},
        {"id": "sw", "pass": "supernet-finetune"}, {"id": "search", "pass": "search", "config": {"budget": 24, "initial": 10, "algorithm": "linas"}},
        {"id": "package", "pass": "package"},
    ]}
    tuned = HFModel(path=model, task="text-classification", family="bert", name="m")
    return RecipeRun("r", raw, tmp_path, {"steps": {}}, Cache(tmp_path / "cache"), {"tuned": tuned}, 2, 0)


def test_search_comparison_runs_every_algorithm_per_seed_on_the_recipes_supernet_sharing_a_store_per_seed(tmp_path):
    from bench.search_efficiency import ALGORITHMS, comparison_recipe

    recipe = comparison_recipe(_recipe_run(tmp_path), [0, 1], tmp_path / "stores")
    searches = [s for s in recipe["steps"] if s["pass"] == "search"]
    assert [s["pass"] for s in recipe["steps"][:5]] == ["load", "dataset", "finetune", "supernet", "supernet-finetune"]
    assert len(searches) == 2 * len(ALGORITHMS) and all(s["inputs"]["supernet"] == "sw" for s in searches)
    assert {s["config"]["algorithm"] for s in searches} == set(ALGORITHMS)
    assert {(s["config"]["seed"], s["config"]["store"]) for s in searches} == {(k, str((tmp_path / "stores" / f"seed{k}.sqlite").resolve())) for k in (0, 1)}
    assert all(s["config"]["budget"] == 24 and s["config"]["initial"] == 10 for s in searches)


def test_hypervolume_summary_and_evaluations_to_reach_a_target():
    from bench.search_efficiency import _evaluations_to_reach, _summary

    runs = [[0.1, 0.2, 0.3, 0.3, 0.5, 0.6], [0.0, 0.1, 0.4, 0.4, 0.4, 0.7]]
    summary = _summary(runs, 6)
    assert list(summary) == [2, 4, 6] and summary[6] == {"mean": pytest.approx(0.65), "min": 0.6, "max": 0.7}
    assert _evaluations_to_reach(runs, [0.3, 0.8]) == [3, None]


def test_search_curves_count_the_searchs_own_candidates_and_the_baselines_only_in_the_final_value(tmp_path):
    from bench.search_efficiency import _history

    # as the search pass writes it: measured counts the two baselines, the curve only the searched candidates
    curve = [[n, 0.01 * n] for n in range(1, 5)]
    (tmp_path / "history.json").write_text(json.dumps({"measured": 6, "hypervolume_curve": curve, "hypervolume_all": 0.07}))
    history = _history(tmp_path)
    assert history == {"hypervolume_curve": [0.01, 0.02, 0.03, 0.04], "hypervolume_all": 0.07}


def test_scaling_recipe_scales_the_supernet_choices_to_bert_base_and_measures_the_same_budget_on_both(tmp_path):
    from bench.search_scaling import BERT_BASE, scaling_recipe

    recipe = scaling_recipe(_recipe_run(tmp_path), tmp_path / "bert", budget=3)
    by_id = {s["id"]: s for s in recipe["steps"]}
    assert by_id[f"{BERT_BASE}-supernet"]["config"] == {"ffn_choices": [1536, 3072], "min_layers": 8}
    searches = [s for s in recipe["steps"] if s["pass"] == "search"]
    assert [s["inputs"]["supernet"] for s in searches] == ["sw", f"{BERT_BASE}-supernet"]
    assert all(s["config"]["budget"] == s["config"]["initial"] == 3 and s["config"]["algorithm"] == "linas" for s in searches)


def test_the_family_survey_tells_prunable_from_whole():
    from bench.family_survey import survey_one

    assert survey_one("electra", "text-classification")[0] == "prunable: found by structure"
    assert survey_one("bert", "text-classification")[0] == "prunable: registered family"
    assert survey_one("albert", "text-classification") == ("runs whole: structure not readable", "no list of identical blocks")
    verdict, evidence = survey_one("mpnet", "text-classification")  # one relative position bias for every head
    assert verdict == "runs whole: found by structure does not hold" and "RuntimeError" in evidence
