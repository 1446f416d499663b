"""The training loop shared by fine-tuning passes: batches, AdamW with warm-up, and checkpoints a killed run resumes from.

Resuming reproduces the same batch order (seeded per epoch) and restores every random state the steps draw from
(torch's for dropout, numpy's, Python's), so a run killed at step k and resumed does exactly the steps a run that was
never killed would have done, to the bit.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import Field

from tailorfit.pipeline.contract import PassConfig, PassContext
from tailorfit.pipeline.models.data import chunks, encode_rows, lm_windows, read_split
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.models.handles import Dataset
from tailorfit.pipeline.models.regression import pearson

CHECKPOINT = "checkpoint.pt"


class TrainingConfig(PassConfig):
    epochs: int = Field(default=2, ge=1)
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimiser steps (quick runs)")
    learning_rate: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    batch_size: int = Field(default=32, ge=1)
    max_length: int = Field(default=128, ge=8, description="tokens per example (classification) or per window (causal-lm)")
    checkpoint_every: int = Field(default=50, ge=1, description="optimiser steps between resumable checkpoints")


@dataclass
class TaskData:
    """Train and validation examples of a dataset, and how to batch them as tensors with labels."""

    preprocessor: Any
    names: list[str]
    task: str
    max_length: int
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]

    @classmethod
    def load(cls, preprocessor: Any, data: Dataset, names: list[str], max_length: int) -> "TaskData":
        def examples(split: str) -> list[dict[str, Any]]:
            rows = read_split(data, split)
            if data.task != "causal-lm":
                return rows
            return [{"input_ids": w} for w in lm_windows(preprocessor, rows, max_length)]

        return cls(preprocessor, names, data.task, max_length, examples("train"), examples("validation"))

    def batch(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if "input_ids" in rows[0]:
            ids = torch.as_tensor(np.stack([r["input_ids"] for r in rows]))
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        enc = encode_rows(self.preprocessor, rows, self.names, self.max_length)
        batch = {k: torch.as_tensor(v) for k, v in enc.items()}
        # a float target makes the model's loss a squared error (problem_type "regression")
        batch["labels"] = torch.as_tensor([r["label"] for r in rows], dtype=torch.float32 if self.task == "text-regression" else None)
        return batch

    def length_report(self) -> dict[str, Any] | None:
        """How the train split's texts fit ``max_length``: token-length percentiles and how many rows are cut (a pair
        loses tokens from its longer side first). None for a causal LM, whose windows are cut to length by design."""
        if "text" not in self.train[0]:
            return None
        pairs = [r["text_pair"] for r in self.train] if "text_pair" in self.train[0] else None
        lengths = np.array([len(ids) for ids in self.preprocessor([r["text"] for r in self.train], pairs, truncation=False)["input_ids"]])
        return {"max_length": self.max_length, "truncation": "longest_first", "rows": len(lengths), "cut": int((lengths > self.max_length).sum()),
                "token_length_percentiles": {str(q): int(np.percentile(lengths, q)) for q in (50, 90, 99, 100)}}

    @property
    def higher_is_better(self) -> bool:
        return self.task != "causal-lm"

    @property
    def score_name(self) -> str:
        return {"causal-lm": "loss", "text-regression": "pearson"}.get(self.task, "accuracy")

    @torch.inference_mode()
    def validation_score(self, net: torch.nn.Module) -> float:
        """Accuracy (classification), Pearson's r (regression) or mean loss (causal LM) on the validation split."""
        was_training = net.training
        net.eval()
        total, score, predicted = 0, 0.0, []
        for part in chunks(self.validation, 64):
            batch = self.batch(part)
            out = net(**batch)
            if self.task == "text-regression":
                predicted.extend(out.logits[:, 0].tolist())
            else:
                score += out.loss.item() * len(part) if self.task == "causal-lm" else (out.logits.argmax(-1) == batch["labels"]).sum().item()
            total += len(part)
        net.train(was_training)
        if self.task == "text-regression":
            return pearson(np.array(predicted), np.array([r["label"] for r in self.validation]))
        return score / max(total, 1)


def train(
    ctx: PassContext, net: torch.nn.Module, data: TaskData, config: TrainingConfig,
    step: Callable[[dict[str, torch.Tensor], int], float], end_of_epoch: Callable[[dict[str, Any]], None], description: str,
) -> dict[str, Any]:
    """Run ``step(batch, step_index)`` (forward + backward, returning the loss) over seeded batches; checkpoint and resume.

    ``end_of_epoch(state)`` validates and saves what the pass keeps; ``state["best"]`` survives resumes.
    """
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    total = total_steps(data, config)
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    sched = get_linear_schedule_with_warmup(opt, int(config.warmup_ratio * total), total)
    state: dict[str, Any] = {"step": 0, "best": None, "history": [], "total": total}
    ckpt = ctx.work_dir / CHECKPOINT
    if ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        try:
            net.load_state_dict(saved["model"])
        except RuntimeError:
            raise TailorfitError(f"the checkpoint {ckpt} was written for another model", "delete that file to start this step afresh") from None
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        _set_random_states(saved["random"])
        state = saved["state"]
        ctx.log.info("resuming %s at step %d of %d", description, state["step"], total)
    net.train()
    with ctx.progress(description, total) as bar:
        bar.advance(state["step"])
        while state["step"] < total:
            epoch, offset = divmod(state["step"], steps_per_epoch)
            for batch_ids in _length_bucketed(data.train, config.batch_size, seed=ctx.seed * 1000 + epoch)[offset:]:
                loss = step(data.batch([data.train[i] for i in batch_ids]), state["step"])
                norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0))
                if not (math.isfinite(loss) and math.isfinite(norm)):  # one step more and every weight is NaN: fail, never cache it
                    raise TailorfitError(f"{description}: the loss became {loss} (gradient norm {norm}) at step {state['step'] + 1}",
                                         "lower learning_rate, or check the model's weights and the data")
                opt.step()
                sched.step()
                opt.zero_grad()
                state["step"] += 1
                state["history"].append(round(loss, 4))
                bar.advance(1)
                epoch_done = state["step"] % steps_per_epoch == 0 or state["step"] == total
                if epoch_done:
                    end_of_epoch(state)
                    net.train()
                if epoch_done or state["step"] % config.checkpoint_every == 0:
                    _checkpoint(ckpt, net, opt, sched, state)
                if epoch_done:
                    break
    ckpt.unlink(missing_ok=True)
    return state


def total_steps(data: TaskData, config: TrainingConfig) -> int:
    """Optimiser steps ``train`` takes: every epoch's batches, capped by ``max_steps``."""
    return min(config.max_steps or 10**12, math.ceil(len(data.train) / config.batch_size) * config.epochs)


def _length_bucketed(rows: list[dict[str, Any]], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of similar length (less padding) in a seeded random order."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    if "text" not in rows[0]:
        return list(chunks(order, batch_size))
    batches = []
    for window in chunks(order, 50 * batch_size):
        batches += list(chunks(sorted(window, key=lambda i: len(rows[i]["text"])), batch_size))
    random.Random(seed).shuffle(batches)
    return batches


def _checkpoint(path: Path, net: torch.nn.Module, opt: Any, sched: Any, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state,
                "random": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}, tmp)
    os.replace(tmp, path)


def _set_random_states(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    np.random.set_state(saved["numpy"])
    random.setstate(saved["python"])


def save_folder_atomic(save: Callable[[Path], None], folder: Path) -> None:
    """Write a folder through ``save(tmp)`` and swap it in, so a kill never leaves half a model."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
