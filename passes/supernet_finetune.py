"""supernet-finetune: trains a super-network so that its sub-networks work (InstaTune's sandwich rule, DynaBERT's teacher).

Consumes: ``SuperNet`` and ``Dataset``. Produces: ``SuperNet`` with trained shared weights. Each step trains the
largest sub-network, the smallest and ``random_subnets`` random ones, each on a mix of the task loss and
distillation. ``teacher: finetuned`` (the default) distils every sub-network from the frozen fine-tuned model the
super-network was made from: its logits, plus its hidden states at the layers the sub-network kept (the hidden width
is never pruned, so shapes allow it everywhere), as DynaBERT does; ``largest`` distils from the largest sub-network's
logits in the same step (in-place distillation). The first ``width_first`` share of the steps samples widths at full
depth, the rest depths too (DynaBERT's width-then-depth schedule). Validation scores the largest and the smallest
each epoch; the best mean is kept. Checkpointed and resumable mid-epoch.
"""
from __future__ import annotations

import json
import random
import shutil
from typing import Any, Literal

import torch
from pydantic import Field

from tailorfit.pipeline.contract import Pass, PassContext
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.models.distillation import distillation_loss, student_loss
from tailorfit.pipeline.models.handles import Dataset, SuperNet
from tailorfit.pipeline.models.loading import input_names, load_preprocessor, load_torch_model
from tailorfit.pipeline.models.training import TaskData, TrainingConfig, save_folder_atomic, total_steps, train
from tailorfit.pipeline.supernet.space import SubnetConfig

from .supernet import SIDECARS, load_supernet


class SupernetFinetuneConfig(TrainingConfig):
    random_subnets: int = Field(default=2, ge=0, description="random sub-networks trained per step besides the largest and smallest")
    teacher: Literal["finetuned", "largest"] = Field(
        default="finetuned", description="finetuned: the frozen model the super-network was made from; largest: the largest sub-network in the same step")
    distillation_weight: float = Field(default=0.5, ge=0, le=1, description="share of the distillation loss (the rest: the task loss)")
    hidden_weight: float = Field(default=1.0, ge=0, description="teacher finetuned: weight of the hidden-state loss beside the logits'")
    temperature: float = Field(default=2.0, gt=0, description="softmax temperature of the distillation loss")
    width_first: float = Field(default=0.5, ge=0, le=1, description="share of the steps that sample widths at full depth before depths are sampled")


class SupernetFinetune(Pass):
    name = "supernet-finetune"
    version = 3  # 3: distillation from the fine-tuned teacher, widths before depths
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
        teacher = load_torch_model(supernet.source).eval().requires_grad_(False) if c.teacher == "finetuned" else None
        widths_until = c.width_first * total_steps(task, c)

        def loss_of(config: SubnetConfig, batch: dict[str, torch.Tensor], target: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
            """The loss of one sub-network against ``target`` (teacher outputs, or the largest's logits), and, for the
            largest trained in place, its logits as the others' target."""
            elastic.activate(config)
            student = net(**batch, output_hidden_states=teacher is not None)
            if target is None:  # the largest, in-place: it is the teacher
                return student.loss, student.logits.detach()
            if teacher is not None:
                return student_loss(student, target, config.kept(), c.distillation_weight, c.hidden_weight, c.temperature), None
            soft = distillation_loss(student.logits, target, c.temperature)
            return (1 - c.distillation_weight) * student.loss + c.distillation_weight * soft, None

        def step(batch: dict[str, torch.Tensor], index: int) -> float:
            rng = random.Random(ctx.seed * 1_000_003 + index)  # the same sub-networks after a resume
            full_depth = index < widths_until
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(**batch, output_hidden_states=True)
                largest, _ = loss_of(space.largest(), batch, target)
            else:
                largest, target = loss_of(space.largest(), batch, None)
            largest.backward()
            for config in [space.smallest(full_depth)] + [space.sample(rng, full_depth) for _ in range(c.random_subnets)]:
                loss_of(config, batch, target)[0].backward()
            elastic.activate(space.largest())  # checkpoints and saving need every layer present
            return largest.item()

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
