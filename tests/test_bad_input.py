"""The bad-input corpus: each case is something a hostile new user tried (a recipe, a model folder, a data file, a
flag), and each must end in one line saying what is wrong and how to fix it, exit status 2, and nothing half-written:
no partial cache entry, no packaged candidate. The table of cases is docs/bad-input.md (a test keeps the two equal).

Cases run through the CLI's ``main`` in this process (one process per case would spend most of the corpus importing
torch); ``test_a_real_process_exits_2`` checks the same contract through a subprocess."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tailorfit.pipeline import TailorfitError, run_pipeline
from tailorfit.pipeline.cli import main

DOC = Path(__file__).parents[1] / "docs" / "bad-input.md"


@dataclass
class Inputs:
    """What a case builds on: the shared tiny model and data, and a folder of its own."""

    tmp: Path
    model: Path
    data: Path

    def copy_model(self) -> Path:
        return Path(shutil.copytree(self.model, self.tmp / "model"))

    def csv(self, rows: list[dict], name: str = "d.csv", **fmt) -> Path:
        path = self.tmp / name
        with open(path, "w", newline="", encoding=fmt.pop("encoding", "utf-8")) as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), **fmt)
            w.writeheader()
            w.writerows(rows)
        return path

    def recipe(self, steps: list[dict] | str, **top) -> list[str]:
        path = self.tmp / "recipe.yaml"
        path.write_text(steps if isinstance(steps, str) else yaml.safe_dump({"name": "x", **top, "steps": steps}))
        return ["run", str(path)]


def steps(model: Path | str, data: Path | str, data_config: dict | None = None, finetune: dict | None = None, **lower) -> list[dict]:
    return [
        {"id": "model", "pass": "load", "config": {"path": str(model)}},
        {"id": "data", "pass": "dataset", "config": {"path": str(data), **(data_config or {})}},
        {"id": "ft", "pass": "finetune", "config": {"max_steps": 1, "batch_size": 8, "max_length": 16, **(finetune or {})}},
        {"id": "low", "pass": "lower", "config": {"target": "openvino-cpu", **lower}},
    ]


def sentences(n: int = 50, **override) -> list[dict]:
    return [{"text": f"a film number {i}", "label": ["pos", "neg"][i % 2], **override} for i in range(n)]


def _model_with(change: Callable[[Path], None]) -> Callable[[Inputs], list[str]]:
    def build(i: Inputs) -> list[str]:
        folder = i.copy_model()
        change(folder)
        return i.recipe(steps(folder, i.data))
    return build


def _config_edit(**fields) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **fields}))
    return change


def _nan_weights(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    first = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _no_tokenizer(folder: Path) -> None:
    for f in folder.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            f.unlink()


def _data(rows_or_text: Callable[[Inputs], Path], **data_config) -> Callable[[Inputs], list[str]]:
    return lambda i: i.recipe(steps(i.model, rows_or_text(i), data_config))


def _write(name: str, content: str | bytes) -> Callable[[Inputs], Path]:
    def make(i: Inputs) -> Path:
        path = i.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path
    return make


def _search_store(store: Callable[[Inputs], Path]) -> Callable[[Inputs], list[str]]:
    def build(i: Inputs) -> list[str]:
        return i.recipe(steps(i.model, i.data)[:3] + [
            {"id": "sn", "pass": "supernet", "inputs": {"model": "ft"}},
            {"id": "search", "pass": "search", "config": {"budget": 20, "store": str(store(i))}},
        ])
    return build


def _regression_supernet(i: Inputs) -> list[str]:
    scores = i.csv([{"text": f"a film number {n}", "label": n / 10} for n in range(50)])
    chain = steps(i.model, scores, {"task": "text-regression"})[:3]
    chain[0]["config"]["task"] = "text-regression"
    return i.recipe([*chain, {"id": "sn", "pass": "supernet", "inputs": {"model": "ft"}}])


def _inspect(manifest: str | None) -> Callable[[Inputs], list[str]]:
    def build(i: Inputs) -> list[str]:
        run = i.tmp / "run"
        run.mkdir()
        if manifest is not None:
            (run / "manifest.json").write_text(manifest)
        return ["inspect", str(run)]
    return build


def _out(kind: str) -> Callable[[Inputs], list[str]]:
    def build(i: Inputs) -> list[str]:
        (i.tmp / "a-file").write_text("not a folder")
        return [*i.recipe(steps(i.model, i.data)), f"--{kind}", str(i.tmp / "a-file")]
    return build


# (case id, what the user gave, how to build it, the message the one line must hold)
CASES: list[tuple[str, str, Callable[[Inputs], list[str]], str]] = [
    # recipes and flags
    ("yaml-syntax", "a recipe with broken YAML", lambda i: i.recipe("name: x\nsteps: [ {pass: load"), "is not valid YAML at line"),
    ("yaml-duplicate-key", "a recipe giving `seed` twice", lambda i: i.recipe("name: x\nseed: 1\nseed: 2\nsteps: [{pass: load}]\n"), "the key 'seed' appears twice"),
    ("recipe-binary", "random bytes as the recipe", lambda i: ["run", str(_write("r.yaml", bytes(range(128, 256)) * 4)(i))], "is not a text file"),
    ("recipe-folder", "a folder as the recipe", lambda i: ["run", str(i.tmp)], "is a folder"),
    ("recipe-missing", "a recipe path that does not exist", lambda i: ["run", str(i.tmp / "nope.yaml")], "does not exist"),
    ("recipe-list", "a YAML list as the recipe", lambda i: i.recipe("- a\n- b\n"), "a recipe must be a mapping"),
    ("recipe-bad-name", "a recipe name with spaces and `!`", lambda i: i.recipe([{"pass": "load"}], name="bad name!"), "malformed recipe: name"),
    ("recipe-negative-seed", "`seed: -1`", lambda i: i.recipe(steps(i.model, i.data), seed=-1), "malformed recipe: seed"),
    ("recipe-threads-yes", "`threads: yes`", lambda i: i.recipe(steps(i.model, i.data), threads=True), "true is not a number"),
    ("unknown-pass", "a step with pass `prune`", lambda i: i.recipe([{"pass": "prune"}]), "unknown pass 'prune'"),
    ("unknown-field", "a misspelt config field (`max_step`)", lambda i: i.recipe(steps(i.model, i.data, finetune={"max_step": 3})), "field 'max_step'"),
    ("field-wrong-type", "`runs: many` in a benchmark", lambda i: i.recipe([{"pass": "benchmark", "config": {"runs": "many"}}]), "field 'runs'"),
    ("batch-size-yes", "`batch_size: yes`", lambda i: i.recipe(steps(i.model, i.data, finetune={"batch_size": True})), "field 'batch_size': Value error, true is not a number"),
    ("no-producer", "a benchmark with no model before it", lambda i: i.recipe([{"pass": "benchmark"}]), "needs a Lowered input but no earlier step produces one"),
    ("cycle", "two steps feeding each other", lambda i: i.recipe([{"id": "a", "pass": "benchmark", "inputs": {"model": "b"}}, {"id": "b", "pass": "benchmark", "inputs": {"model": "a"}}]), "cycle"),
    ("unknown-target", "`target: gpu-9000`", lambda i: i.recipe(steps(i.model, i.data, target="gpu-9000")), "unknown target 'gpu-9000'"),
    ("unsupported-task", "`task: translation`", lambda i: i.recipe([{"pass": "load", "config": {"path": str(i.model), "task": "translation"}}]), "field 'task'"),
    ("policy-missing-layer", "a policy naming layer 12 of a 2-layer model", lambda i: i.recipe(steps(i.model, i.data) + [{"pass": "quantize", "config": {"policy": {"layers": {"12.ffn_up": "fp32"}}}}]), "names layer 12, but the model has 2 layers"),
    ("benchmark-length-0", "a benchmark at sequence length 0", lambda i: i.recipe(steps(i.model, i.data) + [{"pass": "benchmark", "config": {"sequence_lengths": [0]}}]), "field 'sequence_lengths.0'"),
    ("benchmark-too-long", "a benchmark at 4,096 tokens on a 64-position model", lambda i: i.recipe(steps(i.model, i.data) + [{"pass": "benchmark", "config": {"sequence_lengths": [4096]}}]), "takes 64 positions, but sequence length lets 4096-token inputs through"),
    ("out-is-file", "`--out` pointing at a file", _out("out"), "the output folder (--out)"),
    ("cache-is-file", "`--cache` pointing at a file", _out("cache"), "the cache folder (--cache"),
    ("search-store-folder", "a search `store:` in a folder that does not exist", _search_store(lambda i: i.tmp / "no" / "s.sqlite"), "the search store's folder"),
    ("search-store-not-sqlite", "a search `store:` that is a text file", _search_store(_write("s.sqlite", "hello")), "is not an SQLite file"),
    ("inspect-not-a-run", "`inspect` on a folder without a manifest", _inspect(None), "has no manifest.json"),
    ("inspect-corrupt-manifest", "`inspect` on a truncated manifest.json", _inspect('{"recipe_name": "x", "st'), "is damaged: not valid JSON"),
    ("inspect-foreign-json", "`inspect` on a manifest.json that is someone else's JSON", _inspect('{"hello": 1}'), "is not a tailorfit run record"),
    # model folders
    ("model-missing", "a model path that does not exist", lambda i: i.recipe(steps("/no/such/model", i.data)), "model path '/no/such/model' does not exist"),
    ("model-path-is-weights", "the weights file as the model path", lambda i: i.recipe(steps(i.model / "model.safetensors", i.data)), "is a file, not a model folder"),
    ("model-type-unknown", "a config.json whose model_type transformers does not know", _model_with(lambda f: (f / "config.json").write_text('{"model_type": "nonesuch", "num_layers": 2}')), "does not know the model type 'nonesuch'"),
    ("model-no-task-head", "a Mamba config loaded for text classification", _model_with(lambda f: (f / "config.json").write_text('{"model_type": "mamba", "num_hidden_layers": 2}')), "transformers has no text-classification model for the mamba architecture"),
    ("model-foreign-config", "a T5 config beside BERT weights", _model_with(lambda f: (f / "config.json").write_text('{"model_type": "t5", "num_layers": 2}')), "fill only 0 of the 53 tensors of the t5 model"),
    ("config-not-json", "config.json that is not JSON", _model_with(lambda f: (f / "config.json").write_text("{model_type: bert")), "config.json' is not valid JSON"),
    ("config-non-numeric", "`hidden_size: big` in config.json", _model_with(_config_edit(hidden_size="big")), "does not describe a bert model's sizes"),
    ("config-zero-heads", "`num_attention_heads: 0`", _model_with(_config_edit(num_attention_heads=0)), "does not describe a bert model's sizes"),
    ("config-disagrees", "config.json saying hidden 48 for 32-wide weights", _model_with(_config_edit(hidden_size=48)), "do not load"),
    ("weights-missing", "a folder without model.safetensors", _model_with(lambda f: (f / "model.safetensors").unlink()), "do not load"),
    ("weights-truncated", "model.safetensors cut in half", _model_with(_truncate), "do not load"),
    ("weights-empty", "an empty model.safetensors", _model_with(lambda f: (f / "model.safetensors").write_bytes(b"")), "do not load"),
    ("weights-nan", "NaN in a weight tensor (header intact)", _model_with(_nan_weights), "hold NaN or infinite values"),
    ("no-tokenizer", "a model folder without tokenizer files", _model_with(_no_tokenizer), "has no tokenizer vocabulary"),
    ("remote-code", "a config with `auto_map` and no trust_remote_code", _model_with(_config_edit(auto_map={"AutoModel": "x.Y"})), "needs its own code"),
    # data files
    ("data-missing", "a data path that does not exist", lambda i: i.recipe(steps(i.model, "/no/such.csv")), "dataset path '/no/such.csv' does not exist"),
    ("data-no-column", "a CSV without a `text` column", _data(lambda i: i.csv([{"review": f"t {n}", "label": n % 2} for n in range(50)])), "the data has no column 'text' (columns: review, label)"),
    ("data-one-class", "every label `pos`", _data(lambda i: i.csv(sentences(label="pos"))), "has one class only ('pos')"),
    ("data-blank-labels", "some labels blank", _data(lambda i: i.csv([{**r, "label": "" if n % 7 == 0 else r["label"]} for n, r in enumerate(sentences())])), "rows have a blank label"),
    ("data-empty-texts", "some texts empty", _data(lambda i: i.csv([{**r, "text": "  " if n % 9 == 0 else r["text"]} for n, r in enumerate(sentences())])), "rows have an empty text"),
    ("data-too-few-rows", "12 rows", _data(lambda i: i.csv(sentences(12))), "too few to measure a model on"),
    ("data-latin1", "a latin-1 CSV", _data(lambda i: i.csv(sentences(text="un film très réussi"), encoding="latin-1")), "is not utf-8 text (byte 0xe8"),
    ("data-binary-csv", "random bytes named .csv", _data(_write("d.csv", bytes(range(256)) * 8)), "is not utf-8 text"),
    ("data-nul-bytes", "a CSV holding NUL bytes", _data(_write("d.csv", "text,label\na\x00b,pos\n")), "holds NUL bytes"),
    ("data-unknown-encoding", "`encoding: klingon`", _data(lambda i: i.data, encoding="klingon"), "unknown encoding 'klingon'"),
    ("jsonl-broken-line", "a JSONL file with line 3 cut short", _data(_write("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": "c", "lab\n')), "line 3 of 'd.jsonl' is not JSON"),
    ("jsonl-arrays", "JSONL lines that are arrays", _data(_write("d.jsonl", '["a", 1]\n["b", 0]\n')), "line 1 of 'd.jsonl' is a JSON list, not an object"),
    ("data-unknown-format", "a .txt data file", _data(_write("d.txt", "hello\n")), "cannot read 'd.txt'"),
    ("where-unknown-column", "`where: {lang: en}` on data without `lang`", _data(lambda i: i.data, where={"lang": "en"}), "'where' names column 'lang'"),
    ("where-keeps-nothing", "`where` matching no row", _data(lambda i: i.data, where={"source": "nowhere"}), "no rows in"),
    ("fractions-bad", "fractions summing to 1.2", _data(lambda i: i.data, fractions=[0.8, 0.2, 0.2]), "fractions must be three positive numbers summing to 1"),
    ("regression-label-text", "`task: text-regression` on labels `pos`/`neg`", _data(lambda i: i.data, task="text-regression"), "rows have a label in column 'label' that is not a finite number (rows 1, 2"),
    ("regression-supernet", "a super-network of a text-regression model", _regression_supernet, "supernet does not take a text-regression model"),
    # training
    ("finetune-too-long", "fine-tuning 100-word texts at max_length 4,096 on a 64-position model", lambda i: i.recipe(steps(i.model, i.csv(sentences(100, text=" ".join(["film"] * 100))), finetune={"max_length": 4096})), "takes 64 positions, but max_length lets 102-token inputs through"),
    ("loss-explodes", "a learning rate of 1e30", lambda i: i.recipe(steps(i.model, i.data, finetune={"learning_rate": 1e30, "max_steps": 4})), "the loss became"),
]


@pytest.mark.parametrize("case, build, message", [pytest.param(c, b, m, id=c) for c, _, b, m in CASES])
def test_bad_input_ends_in_one_clear_line(case, build, message, tiny_bert, sentences_csv, tmp_path, capsys):
    argv = build(Inputs(tmp_path, tiny_bert, sentences_csv))
    if argv[0] == "run" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code = main([*argv, "--quiet"] if argv[0] == "run" else argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("tailorfit: error: ") and " — " in lines[0], err  # what is wrong — how to fix it
    assert message in lines[0], lines[0]
    cache = tmp_path / "out" / ".cache"
    leftovers = [p for p in cache.rglob("*") if p.is_dir() and p.parent.parent == cache and not (p / "handle.json").exists()] if cache.is_dir() else []
    assert not leftovers, leftovers
    assert not list((tmp_path / "out").rglob("candidates"))


def test_a_real_process_exits_2(tmp_path, sentences_csv):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "steps": steps("/no/such/model", sentences_csv)}))
    r = subprocess.run([sys.executable, "-m", "tailorfit.pipeline.cli", "run", str(recipe), "--out", str(tmp_path / "out"), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().startswith("tailorfit: error: model path")


def test_the_corpus_table_in_docs_lists_every_case():
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), flags=re.M)
    assert documented == [c for c, *_ in CASES] and len(CASES) >= 40


@pytest.mark.parametrize("step", [{"pass": "evaluate", "config": {"max_length": 512}}, {"pass": "quantize", "config": {"max_length": 512, "calibration_samples": 8}}],
                         ids=["evaluate", "calibration"])
def test_inputs_past_the_position_table_are_refused_where_they_are_cut(step, tiny_bert, tmp_path):
    """Outside the corpus only because each prints a warning first (fine-tuning cuts these texts at 16 tokens; static
    INT8 states this CPU's caveat)."""
    i = Inputs(tmp_path, tiny_bert, tmp_path)
    recipe = {"name": "too-long", "steps": steps(tiny_bert, i.csv(sentences(100, text=" ".join(["film"] * 120)))) + [step]}
    with pytest.raises(TailorfitError, match="takes 64 positions, but max_length lets 122-token inputs through"):
        run_pipeline(recipe, out=tmp_path / "out", quiet=True)
