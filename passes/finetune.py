"""finetune: task fine-tuning of a Hugging Face model on the dataset's train split.

Consumes: ``HFModel`` (a classifier head is added if the model has none) and ``Dataset``.
Produces: ``HFModel`` — the checkpoint with the best validation score, saved with its tokenizer.
Checkpoints every ``checkpoint_every`` steps into the pass's folder; a killed run resumes from the
last one, reproducing the same batch order.
"""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext
from tailorfit.pipeline.data import chunks, encode_rows, lm_windows, read_split
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.handles import Dataset, HFModel
from tailorfit.pipeline.models import input_names, load_preprocessor, load_torch_model

CHECKPOINT = "checkpoint.pt"


class FinetuneConfig(PassConfig):
    epochs: int = Field(default=2, ge=1)
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimiser steps (quick runs)")
    learning_rate: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    batch_size: int = Field(default=32, ge=1)
    max_length: int = Field(default=128, ge=8, description="tokens per example (classification) or per window (causal-lm)")
    checkpoint_every: int = Field(default=50, ge=1, description="optimiser steps between resumable checkpoints")


class Finetune(Pass):
    name = "finetune"
    Config = FinetuneConfig
    packages = ("torch", "transformers")

    def run(self, ctx: PassContext, model: HFModel, data: Dataset) -> HFModel:
        if model.task != data.task:
            raise TailorfitError(f"the model's task is {model.task} but the dataset's is {data.task}", "set the same task in the load and dataset steps")
        c = self.config
        torch.manual_seed(ctx.seed)
        tok = load_preprocessor(model)
        net = self._load(model, data)
        names = input_names(net, model)
        train = self._examples(tok, data, "train", names)
        val = self._examples(tok, data, "validation", names)
        steps_per_epoch = math.ceil(len(train) / c.batch_size)
        total = min(c.max_steps or 10**12, steps_per_epoch * c.epochs)
        opt = torch.optim.AdamW(net.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
        from transformers import get_linear_schedule_with_warmup

        sched = get_linear_schedule_with_warmup(opt, int(c.warmup_ratio * total), total)
        state = {"step": 0, "best": None, "history": []}
        ckpt = ctx.work_dir / CHECKPOINT
        if ckpt.is_file():
            saved = torch.load(ckpt, weights_only=False)
            net.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            state = saved["state"]
            ctx.log.info("resuming fine-tuning at step %d of %d", state["step"], total)
        best_dir = ctx.work_dir / "model"
        with ctx.progress("fine-tuning", total) as bar:
            bar.advance(state["step"])
            while state["step"] < total:
                epoch, offset = divmod(state["step"], steps_per_epoch)
                order = list(range(len(train)))
                random.Random(ctx.seed * 1000 + epoch).shuffle(order)
                batches = _length_bucketed(order, train, c.batch_size, seed=ctx.seed * 1000 + epoch)
                net.train()
                for batch_ids in batches[offset:]:
                    loss = net(**self._batch(tok, [train[i] for i in batch_ids], names)).loss
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    opt.zero_grad()
                    state["step"] += 1
                    state["history"].append(round(loss.item(), 4))
                    bar.advance(1)
                    epoch_done = state["step"] % steps_per_epoch == 0 or state["step"] == total
                    if epoch_done:
                        score = self._validate(net, tok, val, names, model.task)
                        ctx.log.info("step %d: validation %s %.4f", state["step"], "accuracy" if model.task != "causal-lm" else "loss", score)
                        better = state["best"] is None or (score > state["best"] if model.task != "causal-lm" else score < state["best"])
                        if better:
                            state["best"] = score
                            _save_atomic(net, tok, best_dir)
                        net.train()
                    if epoch_done or state["step"] % c.checkpoint_every == 0:
                        _checkpoint(ckpt, net, opt, sched, state)
                    if state["step"] >= total or epoch_done:
                        break
        ckpt.unlink(missing_ok=True)
        (ctx.work_dir / "train_log.json").write_text(json.dumps({"steps": total, "best_validation": state["best"], "loss": state["history"]}))
        return HFModel(path=best_dir, task=model.task, family=model.family, name=model.name, num_labels=len(data.label_names) or None)

    def _load(self, model: HFModel, data: Dataset) -> torch.nn.Module:
        if model.task == "causal-lm":
            return load_torch_model(model)
        labels = data.label_names
        kwargs: dict[str, Any] = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
        if model.num_labels not in (None, len(labels)):
            kwargs["ignore_mismatched_sizes"] = True  # the head is replaced, on purpose
        return load_torch_model(model, **kwargs)

    def _examples(self, tok: Any, data: Dataset, split: str, names: list[str]) -> list[dict[str, Any]]:
        rows = read_split(data, split)
        if data.task != "causal-lm":
            return rows
        return [{"input_ids": w} for w in lm_windows(tok, rows, self.config.max_length)]

    def _batch(self, tok: Any, rows: list[dict[str, Any]], names: list[str]) -> dict[str, torch.Tensor]:
        if "input_ids" in rows[0]:
            ids = torch.as_tensor(np.stack([r["input_ids"] for r in rows]))
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        enc = encode_rows(tok, rows, names, self.config.max_length)
        batch = {k: torch.as_tensor(v) for k, v in enc.items()}
        batch["labels"] = torch.as_tensor([r["label"] for r in rows])
        return batch

    @torch.inference_mode()
    def _validate(self, net: torch.nn.Module, tok: Any, rows: list[dict[str, Any]], names: list[str], task: str) -> float:
        net.eval()
        total, score = 0, 0.0
        for part in chunks(rows, 64):
            batch = self._batch(tok, part, names)
            out = net(**batch)
            if task == "causal-lm":
                score += out.loss.item() * len(part)
            else:
                score += (out.logits.argmax(-1) == batch["labels"]).sum().item()
            total += len(part)
        return score / max(total, 1)


def _length_bucketed(order: list[int], rows: list[dict[str, Any]], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of similar length (less padding), in a seeded random order of buckets."""
    if "text" not in rows[0]:
        return list(chunks(order, batch_size))
    pool = 50 * batch_size
    batches = []
    for window in chunks(order, pool):
        window = sorted(window, key=lambda i: len(rows[i]["text"]))
        batches += list(chunks(window, batch_size))
    random.Random(seed).shuffle(batches)
    return batches


def _checkpoint(path: Path, net: torch.nn.Module, opt: Any, sched: Any, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state}, tmp)
    os.replace(tmp, path)


def _save_atomic(net: torch.nn.Module, tok: Any, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    net.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
