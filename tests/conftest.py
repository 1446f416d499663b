"""Tiny models and data built in code, so tests need no download."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

POSITIVE = "good great fine lovely superb brilliant moving funny charming warm".split()
NEGATIVE = "bad awful dull boring poor weak clumsy tedious bland flat".split()
FILLER = "the film movie plot story acting cast is was a an and very quite really".split()


def make_sentences(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append({"text": " ".join(words), "label": "pos" if label else "neg", "source": "synthetic"})
    return rows


def _tokenizer(folder: Path, kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>"] + sorted(set(POSITIVE + NEGATIVE + FILLER))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                       model_input_names=["input_ids", "token_type_ids", "attention_mask"])  # as BERT's: pairs mark their second segment
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>")
    fast.save_pretrained(folder)
    return len(vocab)


def _save_tiny(tmp_path_factory, name: str, tokenizer_kind: str, build) -> Path:
    """A folder with a word-level tokenizer and a seeded random model ``build(vocab_size)`` saved beside it."""
    folder = tmp_path_factory.mktemp(name)
    vocab = _tokenizer(folder, tokenizer_kind)
    torch.manual_seed(0)
    build(vocab).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT encoder without a task head, like the default model."""
    from transformers import BertConfig, BertModel

    return _save_tiny(tmp_path_factory, "tiny-bert", "bert", lambda vocab: BertModel(BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
    )))


@pytest.fixture(scope="session")
def bert_classifier(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT with a (random) two-class head, as a fine-tuned classifier would be saved."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("bert-cls")
    torch.manual_seed(0)  # the head is new: seed it so tests do not depend on which test ran first
    AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer LLaMA decoder with grouped-query attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _save_tiny(tmp_path_factory, "tiny-llama", "llama", lambda vocab: LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        max_position_embeddings=128, eos_token_id=5, pad_token_id=0, bos_token_id=5,
    )))


@pytest.fixture(scope="session")
def sentences_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sentences.csv"
    import csv

    rows = make_sentences(400)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label", "source"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def text_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lm") / "text.jsonl"
    with open(path, "w") as f:
        for r in make_sentences(300, seed=1):
            f.write(json.dumps({"text": r["text"]}) + "\n")
    return path


def classification_recipe(model: Path, data: Path, name: str = "tiny", targets=("openvino-cpu", "onnxruntime-cpu"), policy="int8") -> dict:
    """A full lower/quantize/evaluate/benchmark/package recipe on the tiny BERT, kept short."""
    steps = [
        {"id": "model", "pass": "load", "config": {"path": str(model), "task": "text-classification", "name": "tiny"}},
        {"id": "data", "pass": "dataset", "config": {"path": str(data)}},
        {"id": "finetune", "pass": "finetune", "config": {"epochs": 1, "max_steps": 6, "batch_size": 16, "max_length": 32, "checkpoint_every": 2}},
    ]
    for t in targets:
        short = t.split("-")[0]
        steps += [
            {"id": f"{short}-fp32", "pass": "lower", "inputs": {"model": "finetune"}, "config": {"target": t}},
            {"id": f"{short}-fp32-eval", "pass": "evaluate", "config": {"max_length": 32, "bootstrap": 200}},
            {"id": f"{short}-fp32-bench", "pass": "benchmark", "config": {"sequence_lengths": [16], "runs": 50, "warmup": 2, "attempts": 1}},
            {"id": f"{short}-int8", "pass": "quantize", "inputs": {"model": f"{short}-fp32"}, "config": {"policy": policy, "calibration_samples": 16, "max_length": 32}},
            {"id": f"{short}-int8-eval", "pass": "evaluate", "config": {"max_length": 32, "bootstrap": 200}},
            {"id": f"{short}-int8-bench", "pass": "benchmark", "config": {"sequence_lengths": [16], "runs": 50, "warmup": 2, "attempts": 1}},
        ]
    steps.append({"id": "package", "pass": "package"})
    return {"name": name, "seed": 0, "threads": 2, "steps": steps}


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer ViT classifier for 8x8 images, with its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    folder = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=10)
    ViTForImageClassification(cfg).save_pretrained(folder)
    # digits pixels are 0..16: rescale to 0..1, then normalise
    ViTImageProcessorPil(size={"height": 8, "width": 8}, do_resize=False, rescale_factor=1 / 16, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def digits_jsonl(tmp_path_factory) -> Path:
    """scikit-learn's bundled 8x8 digits as nested pixel lists."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path_factory.mktemp("digits") / "digits.jsonl"
    with open(path, "w") as f:
        for image, label in zip(digits.images[:300], digits.target[:300]):
            f.write(json.dumps({"image": image.tolist(), "label": int(label)}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer GPT-2 (fused Q|K|V Conv1D projections)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return _save_tiny(tmp_path_factory, "tiny-gpt2", "gpt2", lambda vocab: GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128, eos_token_id=5, bos_token_id=5,
    )))


@pytest.fixture(scope="session")
def save_tiny(tmp_path_factory):
    """``save_tiny(name, tokenizer_kind, build)``: a model folder made as the tiny fixtures above make theirs."""
    return lambda name, tokenizer_kind, build: _save_tiny(tmp_path_factory, name, tokenizer_kind, build)


def cli_run_command(recipe: dict, folder: Path) -> list[str]:
    """``tailorfit run`` of ``recipe`` (written to ``folder/r.yaml``) into ``folder/out``, as a user types it."""
    import sys

    import yaml

    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return [sys.executable, "-m", "tailorfit.pipeline.cli", "run", str(path), "--out", str(folder / "out")]


def kill_when(cmd: list[str], ready, after: float = 0.0, timeout: float = 600) -> None:
    """Start ``cmd``, SIGKILL it ``after`` seconds once ``ready()`` holds (or at ``timeout``), and reap it."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and not ready():
        time.sleep(0.05)
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
