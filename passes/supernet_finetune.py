"""supernet-finetune: trains a super-network so that its sub-networks work (InstaTune's sandwich rule).

Consumes: ``SuperNet`` and ``Dataset``. Produces: ``SuperNet`` with trained shared weights. Each step
trains the largest sub-network on the task, then the smallest and ``random_subnets`` random ones on a
mix of the task loss and distillation from the largest's outputs (in-place distillation). Validation
scores the largest and the smallest each epoch; the best mean is kept. Checkpointed and resumable.
"""
from __future__ import annotations

import json
import random
import shutil
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from tailorfit.pipeline.contract import Pass, PassContext
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.models.handles import Dataset, SuperNet
from tailorfit.pipeline.models.loading import input_names, load_preprocessor
from tailorfit.pipeline.models.training import TaskData, TrainingConfig, save_folder_atomic, train

from .supernet import SIDECARS, load_supernet


class SupernetFinetuneConfig(TrainingConfig):
    random_subnets: int = Field(default=2, ge=0, description="random sub-networks trained per step besides the largest and smallest")
    distillation_weight: float = Field(default=0.5, ge=0, le=1, description="share of the distillation loss for non-largest sub-networks")
    temperature: float = Field(default=2.0, gt=0, description="softmax temperature of the distillation loss")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at a temperature, scaled by T^2 so gradients keep their size."""
    vocab = student.shape[-1]
    return F.kl_div(
        F.log_softmax(student.reshape(-1, vocab) / temperature, -1), F.softmax(teacher.reshape(-1, vocab) / temperature, -1), reduction="batchmean"
    ) * temperature**2


class SupernetFinetune(Pass):
    name = "supernet-finetune"
    version = 2  # 2: the smallest sub-network keeps evenly spaced layers, the last included
    Config = SupernetFinetuneConfig
    packages = ("torch", "transformers")

    def run(self, ctx: PassContext, supernet: SuperNet, data: Dataset) -> SuperNet:
        if supernet.source.task != data.task:
            raise TailorfitError(f"the super-network's task is {supernet.source.task} but the dataset's is {data.task}", "use a dataset of the same task")
        if supernet.source.task != "causal-lm" and supernet.source.num_labels != len(data.label_names):
            raise TailorfitError(
                f"the super-network has {supernet.source.num_labels} output classes, the dataset {len(data.label_names)}",
                "fine-tune the model on this dataset (finetune step) before making the super-network",
            )
        c = self.config
        torch.manual_seed(ctx.seed)
        elastic = load_supernet(supernet)
        net, space = elastic.model, supernet.space
        tok = load_preprocessor(supernet.source)
        task = TaskData.load(tok, data, input_names(net, supernet.source), c.max_length)
        out = ctx.work_dir / "supernet"

        def step(batch: dict[str, torch.Tensor], index: int) -> float:
            rng = random.Random(ctx.seed * 1_000_003 + index)  # the same sub-networks after a resume
            elastic.activate(space.largest())
            largest = net(**batch)
            largest.loss.backward()
            teacher = largest.logits.detach()
            for config in [space.smallest()] + [space.sample(rng) for _ in range(c.random_subnets)]:
                elastic.activate(config)
                student = net(**batch)
                loss = (1 - c.distillation_weight) * student.loss + c.distillation_weight * distillation_loss(student.logits, teacher, c.temperature)
                loss.backward()
            elastic.activate(space.largest())  # checkpoints and saving need every layer present
            return largest.loss.item()

        def end_of_epoch(state: dict[str, Any]) -> None:
            elastic.activate(space.smallest())
            small = task.validation_score(net)
            elastic.activate(space.largest())
            large = task.validation_score(net)
            score = (small + large) / 2
            state.setdefault("validation", []).append({"step": state["step"], "largest": large, "smallest": small})
            ctx.log.info("step %d: validation largest %.4f, smallest %.4f", state["step"], large, small)
            if state["best"] is None or (score > state["best"]) == task.higher_is_better:
                state["best"] = score

                def save(tmp):
                    net.save_pretrained(tmp)
                    tok.save_pretrained(tmp)
                    for name in SIDECARS:
                        shutil.copy2(supernet.path / name, tmp / name)

                save_folder_atomic(save, out)

        state = train(ctx, net, task, c, step, end_of_epoch, "super-network fine-tuning")
        (ctx.work_dir / "train_log.json").write_text(json.dumps({"steps": state["total"], "best_mean_validation": state["best"], "validation": state.get("validation", []), "loss_largest": state["history"]}))
        return SuperNet(path=out, source=supernet.source, space=space)
