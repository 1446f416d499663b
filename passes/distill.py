"""distill: fine-tunes a student model from a teacher on a task's training split (knowledge distillation).

Consumes: ``HFModel`` student (typically a sub-network from ``extract`` or ``select``), ``HFModel`` teacher (the
fine-tuned model it was cut from; set ``inputs.teacher``) and ``Dataset``. Produces: ``HFModel`` — the student's
folder with trained weights, ``distillation.json`` (the student's validation score in PyTorch before and after, the
loss per step) and the same record on the handle, which the model card states. The loss mixes the task loss with
the teacher's softened logits and, for a sub-network (its ``architecture.json`` says which teacher layers it kept),
the teacher's hidden states at those layers (DynaBERT, Minitron). The best epoch is kept; checkpointed and resumable.
A student of the teacher's own shape (a search's largest sub-network) is not trained: distilling it would approach the
teacher's weights, at the highest cost of any finalist; it keeps whichever of its own and the teacher's weights
validate better.
"""
from __future__ import annotations

import json
import shutil
from typing import Any

import torch
from pydantic import Field

from tailorfit.pipeline.contract import Facts, Pass, PassContext, PortFacts
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.models.distillation import student_loss
from tailorfit.pipeline.models.handles import Dataset, HFModel
from tailorfit.pipeline.models.regression import refuse_regression
from tailorfit.pipeline.models.loading import ARCHITECTURE, family_of, input_names, load_preprocessor, load_torch_model, read_config
from tailorfit.pipeline.models.training import TaskData, TrainingConfig, save_folder_atomic, train
from tailorfit.pipeline.supernet.space import SubnetConfig


class DistillConfig(TrainingConfig):
    epochs: int = Field(default=1, ge=1)
    distillation_weight: float = Field(default=0.5, ge=0, le=1, description="share of the distillation loss (the rest: the task loss)")
    hidden_weight: float = Field(default=1.0, ge=0, description="weight of the hidden-state loss beside the logits' (sub-networks only)")
    temperature: float = Field(default=2.0, gt=0, description="softmax temperature of the distillation loss")


class Distill(Pass):
    name = "distill"
    Config = DistillConfig
    packages = ("torch", "transformers", "safetensors")

    def requires(self, inputs: PortFacts) -> None:
        refuse_regression(inputs["student"].get("task"), "distill")

    def ensures(self, inputs: PortFacts) -> Facts:
        """The student's facts: distillation changes its weights, not its shape."""
        return dict(inputs["student"])

    def run(self, ctx: PassContext, student: HFModel, teacher: HFModel, data: Dataset) -> HFModel:
        _check(student, teacher, data)
        c = self.config
        torch.manual_seed(ctx.seed)
        net, tutor = load_torch_model(student), load_torch_model(teacher).eval().requires_grad_(False)
        kept = _kept_layers(student, teacher)
        tok = load_preprocessor(student)
        task = TaskData.load(tok, data, input_names(net, student), c.max_length)
        before = task.validation_score(net)
        out = ctx.work_dir / "model"
        if _shapes(net) == _shapes(tutor):
            return _same_shape(ctx, net, tutor, student, teacher, task, before)

        def step(batch: dict[str, torch.Tensor], index: int) -> float:
            with torch.no_grad():
                target = tutor(**batch, output_hidden_states=True)
            loss = student_loss(net(**batch, output_hidden_states=kept is not None), target, kept, c.distillation_weight, c.hidden_weight, c.temperature)
            loss.backward()
            return loss.item()

        def end_of_epoch(state: dict) -> None:
            score = task.validation_score(net)
            state.setdefault("validation", []).append({"step": state["step"], "score": score})
            ctx.log.info("step %d: student validation %.4f (before distillation %.4f)", state["step"], score, before)
            if state["best"] is None or (score > state["best"]) == task.higher_is_better:
                state["best"] = score
                save_folder_atomic(lambda tmp: _save(net, student, tmp), out)

        state = train(ctx, net, task, c, step, end_of_epoch, f"distilling {student.name} from {teacher.name}")
        record = _record(teacher, task, before, state["best"], steps=state["total"], hidden_states=kept is not None, validation=state.get("validation", []))
        (out / "distillation.json").write_text(json.dumps({**record, "loss": state["history"]}, indent=1))
        return student.model_copy(update={"path": out, "distillation": record})


def _shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in net.state_dict().items()}


def _same_shape(ctx: PassContext, net: torch.nn.Module, tutor: torch.nn.Module, student: HFModel, teacher: HFModel, task: TaskData,
                before: float) -> HFModel:
    """Of the student's weights and the teacher's (same shape), the ones that validate better; no training. The
    student can be the better one: a search's largest sub-network has had the sandwich epoch on top of the teacher's."""
    teachers = task.validation_score(tutor)
    took = teachers > before if task.higher_is_better else teachers < before
    if took:
        net.load_state_dict(tutor.state_dict())
    out = ctx.work_dir / "model"
    save_folder_atomic(lambda tmp: _save(net, student, tmp), out)
    ctx.log.info("%s has %s's shape: nothing to train; it keeps %s weights (validation: its own %.4f, the teacher's %.4f)",
                 student.name, teacher.name, "the teacher's" if took else "its own", before, teachers)
    record = _record(teacher, task, before, max(before, teachers) if task.higher_is_better else min(before, teachers), steps=0, hidden_states=False,
                     validation=[]) | {"same_shape_as_teacher": True, "teacher_score": teachers, "took_teacher_weights": took}
    (out / "distillation.json").write_text(json.dumps(record, indent=1))
    return student.model_copy(update={"path": out, "distillation": record})


def _record(teacher: HFModel, task: TaskData, before: float, after: float, **how: Any) -> dict[str, Any]:
    measure = "accuracy" if task.higher_is_better else "loss"
    return {"teacher": teacher.name, "teacher_key": teacher.key, "split": "validation", "measure": f"{measure} (PyTorch)", "before": before, "after": after, **how}


def _check(student: HFModel, teacher: HFModel, data: Dataset) -> None:
    if student.key == teacher.key:
        raise TailorfitError("the distill step's teacher is its student", "set inputs.teacher to the fine-tuned model's step")
    if not student.task == teacher.task == data.task:
        raise TailorfitError(f"student ({student.task}), teacher ({teacher.task}) and dataset ({data.task}) must share a task", "use models and data of one task")
    if student.num_labels != teacher.num_labels:
        raise TailorfitError(f"the student has {student.num_labels} output classes, the teacher {teacher.num_labels}", "distil from the model the student was cut from")


def _kept_layers(student: HFModel, teacher: HFModel) -> list[int] | None:
    """The teacher layers whose hidden states the student's layers match: those a sub-network kept, or all of them when
    the two are as deep; None (logits only) otherwise, or when no family module describes them."""
    if (student.path / ARCHITECTURE).is_file():
        return SubnetConfig.model_validate(json.loads((student.path / ARCHITECTURE).read_text())["subnet"]).kept()
    if student.family is None or teacher.family is None:  # no family module to say where the layers are
        return None
    student_dims, teacher_dims = (family_of(m).dims(read_config(m.path)) for m in (student, teacher))
    same = student_dims["num_layers"] == teacher_dims["num_layers"] and student_dims["hidden_size"] == teacher_dims["hidden_size"]
    return list(range(student_dims["num_layers"])) if same else None


def _save(net: torch.nn.Module, student: HFModel, folder) -> None:
    """The student's folder (config, tokenizer, architecture) with the distilled weights in place of its own."""
    from safetensors.torch import save_model

    shutil.copytree(student.path, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.safetensors.index.json", "distillation.json"))
    save_model(net, str(folder / "model.safetensors"))
