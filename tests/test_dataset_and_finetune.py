"""The dataset split and fine-tuning, including resuming a fine-tune killed mid-way."""
from __future__ import annotations

import hashlib
import json
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import cli_run_command, kill_when, make_sentences
from tailorfit.pipeline import read_run, run_pipeline
from tailorfit.pipeline.models.data import read_split


def _dataset(path, tmp_path, **config):
    recipe = {"name": "d", "steps": [{"id": "data", "pass": "dataset", "config": {"path": str(path), **config}}]}
    return run_pipeline(recipe, out=tmp_path / "out", quiet=True).outputs["data"]


def test_split_is_seeded_stratified_and_recorded(sentences_csv, tmp_path):
    data = _dataset(sentences_csv, tmp_path)
    assert data.sizes == {"train": 320, "validation": 40, "test": 40}
    assert data.label_names == ["neg", "pos"]
    ids = {s: {r["id"] for r in read_split(data, s)} for s in ("train", "validation", "test")}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"]) and not (ids["validation"] & ids["test"])
    test = read_split(data, "test")
    assert sum(r["label"] for r in test) == 20  # stratified: half of each class
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["stratified"] and len(meta["split_ids_sha256"]) == 3
    again = _dataset(sentences_csv, tmp_path / "again")
    assert [r["id"] for r in read_split(again, "test")] == [r["id"] for r in test]


def test_parquet_jsonl_and_saved_dataset_read_alike(tmp_path):
    rows = [{"sentence": r["text"], "y": r["label"]} for r in make_sentences(100)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    saved = tmp_path / "saved"
    saved.mkdir()
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(saved / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    splits = []
    for i, path in enumerate([tmp_path / "d.parquet", tmp_path / "d.jsonl", saved]):
        data = _dataset(path, tmp_path / str(i), text_column="sentence", label_column="y", where={})
        splits.append([(r["id"], r["text"], r["label"]) for r in read_split(data, "test")])
    assert splits[0] == splits[1] == splits[2]


def test_data_as_spreadsheets_write_it_reads_as_meant(tmp_path):
    """Excel's UTF-8 BOM, a semicolon-separated CSV (a European Excel's default), a JSON array file and labels written
    as 0 / 0.0 / 1 / 1.0 all give the same rows and two classes, as the comma-separated UTF-8 original does."""
    rows = make_sentences(100)
    labels = {"pos": ["1", "1.0"], "neg": ["0", "0.0"]}
    plain = "text,label\n" + "".join(f'"{r["text"]}",{labels[r["label"]][0]}\n' for r in rows)
    variants = {
        "plain.csv": plain.encode(),
        "bom.csv": b"\xef\xbb\xbf" + plain.encode(),
        "semicolon.csv": plain.replace(",", ";").encode(),
        "mixed-numbers.csv": ("text,label\n" + "".join(f'"{r["text"]}",{labels[r["label"]][i % 2]}\n' for i, r in enumerate(rows))).encode(),
        "array.json": json.dumps([{"text": r["text"], "label": int(labels[r["label"]][0])} for r in rows]).encode(),
    }
    splits = {}
    for name, content in variants.items():
        (tmp_path / name).write_bytes(content)
        data = _dataset(tmp_path / name, tmp_path / name.replace(".", "-"))
        assert data.label_names == ["0", "1"], name
        splits[name] = [(r["id"], r["text"], r["label"]) for r in read_split(data, "test")]
    assert all(split == splits["plain.csv"] for split in splits.values())


def test_text_pairs_are_split_encoded_as_pairs_trained_and_evaluated(tiny_bert, tmp_path):
    """Two text columns make a pair task (here: do two sentences share their sentiment?): rows keep both texts, the
    tokenizer sees them as a pair (second segment marked in token_type_ids), and fine-tuning and evaluation run."""
    import random

    from tailorfit.pipeline.models.data import encode_rows
    from tailorfit.pipeline.models.handles import HFModel
    from tailorfit.pipeline.models.loading import load_preprocessor

    rows = make_sentences(200)
    partner = random.Random(0).sample(rows, len(rows))
    pairs = [{"first": a["text"], "second": b["text"], "same": int(a["label"] == b["label"])} for a, b in zip(rows, partner)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    recipe = {"name": "pairs", "threads": 1, "steps": [
        {"id": "model", "pass": "load", "config": {"path": str(tiny_bert)}},
        {"id": "data", "pass": "dataset", "config": {"path": str(tmp_path / "pairs.jsonl"), "text_column": ["first", "second"], "label_column": "same"}},
        {"id": "ft", "pass": "finetune", "config": {"max_steps": 3, "batch_size": 16, "max_length": 32}},
        {"id": "ov", "pass": "lower", "config": {"target": "openvino-cpu"}},
        {"id": "eval", "pass": "evaluate", "config": {"max_length": 32, "bootstrap": 100}},
    ]}
    result = run_pipeline(recipe, out=tmp_path / "out", quiet=True)
    data = result.outputs["data"]
    test = read_split(data, "test")
    assert all(r["text_pair"] for r in test) and data.label_names == ["0", "1"]
    enc = encode_rows(load_preprocessor(HFModel(path=tiny_bert, task="text-classification", family="bert", name="t")), test[:2], ["input_ids", "token_type_ids"], 32)
    assert set(enc["token_type_ids"][0].tolist()) == {0, 1}  # the second text is the second segment
    metrics = result.outputs["eval"].metrics
    assert metrics["examples"] == len(test) and 0 <= metrics["accuracy"] <= 1
    lengths = json.loads((result.outputs["ft"].path.parent / "train_log.json").read_text())["lengths"]  # what max_length cut, as pairs
    assert lengths["rows"] == data.sizes["train"] and lengths["cut"] == 0 and 5 < lengths["token_length_percentiles"]["50"] <= lengths["token_length_percentiles"]["100"] <= 32


def test_where_filter_and_max_rows(sentences_csv, tmp_path):
    data = _dataset(sentences_csv, tmp_path, where={"source": "synthetic"}, max_rows=100)
    assert sum(data.sizes.values()) == 100


def _finetune_recipe(model, data, steps):
    return {
        "name": "ft", "threads": 1,
        "steps": [
            {"id": "model", "pass": "load", "config": {"path": str(model)}},
            {"id": "data", "pass": "dataset", "config": {"path": str(data)}},
            {"id": "finetune", "pass": "finetune", "config": {"epochs": 100, "max_steps": steps, "batch_size": 8, "max_length": 24, "learning_rate": 1e-3, "checkpoint_every": 5}},
        ],
    }


def test_finetune_learns_the_task(tiny_bert, sentences_csv, tmp_path):
    result = run_pipeline(_finetune_recipe(tiny_bert, sentences_csv, 120), out=tmp_path, quiet=True)
    model = result.outputs["finetune"]
    log = json.loads((model.path.parent / "train_log.json").read_text())
    assert log["best_validation"] >= 0.8  # the sentiment word decides the label: a tiny model learns it
    assert sum(log["loss"][-10:]) < sum(log["loss"][:10])
    assert model.num_labels == 2 and (model.path / "model.safetensors").is_file()


def test_killed_finetune_resumes_from_its_checkpoint(tiny_bert, sentences_csv, tmp_path):
    cmd = cli_run_command(_finetune_recipe(tiny_bert, sentences_csv, 400), tmp_path)
    cache = tmp_path / "out" / ".cache" / "finetune"
    kill_when(cmd, lambda: bool(list(cache.glob("*.partial/checkpoint.pt"))), after=0.5, timeout=300)
    partial = list(cache.glob("*.partial"))
    assert partial and (partial[0] / "checkpoint.pt").is_file(), "no checkpoint before the kill"
    assert not [p for p in cache.iterdir() if not p.name.endswith(".partial")], "the kill came too late: fine-tuning had finished"
    # the manifest still says running, but its process is gone: inspect and the next run say so
    run_dir = tmp_path / "out" / "ft"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    manifest, _ = read_run(run_dir)
    assert manifest["status"] == "interrupted" and manifest["last_finished_step"] == "data"
    second = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "previous run here" in second.stderr and "interrupted after step data" in second.stderr
    assert read_run(run_dir)[0]["status"] == "finished"
    assert "resuming fine-tuning at step" in second.stderr
    resumed_at = int(second.stderr.split("resuming fine-tuning at step")[1].split()[0])
    assert 0 < resumed_at < 400
    finished = [p for p in cache.iterdir() if not p.name.endswith(".partial")]
    assert len(finished) == 1 and (finished[0] / "handle.json").is_file()
    log = json.loads((finished[0] / "train_log.json").read_text())
    assert len(log["loss"]) == 400  # the history spans the kill: nothing redone, nothing lost
    # bit-exact: the same losses and the same weight bytes as a run that was never killed (dropout included)
    clean = run_pipeline(_finetune_recipe(tiny_bert, sentences_csv, 400), out=tmp_path / "clean", quiet=True).outputs["finetune"]
    assert json.loads((clean.path.parent / "train_log.json").read_text())["loss"] == log["loss"]
    resumed = finished[0] / clean.path.name / "model.safetensors"
    assert hashlib.sha256(resumed.read_bytes()).hexdigest() == hashlib.sha256((clean.path / "model.safetensors").read_bytes()).hexdigest()
