"""finetune: task fine-tuning of a Hugging Face model on the dataset's train split.

Consumes: ``HFModel`` (a classifier head is added if the model has none) and ``Dataset``.
Produces: ``HFModel`` — the checkpoint with the best validation score, saved with its tokenizer.
Checkpoints every ``checkpoint_every`` steps into the pass's folder; a killed run resumes from the
last one, reproducing the same batch order.
"""
from __future__ import annotations

import json
from typing import Any

import torch

from tailorfit.pipeline.contract import Pass, PassContext
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.models.handles import Dataset, HFModel
from tailorfit.pipeline.models.loading import input_names, load_preprocessor, load_torch_model, refuse_beyond_positions
from tailorfit.pipeline.models.training import TaskData, TrainingConfig, save_folder_atomic, train


class Finetune(Pass):
    name = "finetune"
    Config = TrainingConfig
    packages = ("torch", "transformers")

    def run(self, ctx: PassContext, model: HFModel, data: Dataset) -> HFModel:
        if model.task != data.task:
            raise TailorfitError(f"the model's task is {model.task} but the dataset's is {data.task}", "set the same task in the load and dataset steps")
        torch.manual_seed(ctx.seed)
        tok = load_preprocessor(model)
        net = self._load(model, data)
        task = TaskData.load(tok, data, input_names(net, model), self.config.max_length)
        lengths = task.length_report()
        longest = lengths["token_length_percentiles"]["100"] if lengths else self.config.max_length  # a causal LM's windows are max_length long
        refuse_beyond_positions(net.config.to_dict(), min(longest, self.config.max_length), model.name, "max_length")
        if lengths and lengths["cut"]:
            ctx.log.warning("%d of %d training texts are longer than max_length %d and are cut (99th percentile %d, longest %d tokens)", lengths["cut"],
                            lengths["rows"], self.config.max_length, lengths["token_length_percentiles"]["99"], lengths["token_length_percentiles"]["100"])
        best_dir = ctx.work_dir / "model"

        def step(batch: dict[str, torch.Tensor], index: int) -> float:
            loss = net(**batch).loss
            loss.backward()
            return loss.item()

        def end_of_epoch(state: dict[str, Any]) -> None:
            score = task.validation_score(net)
            ctx.log.info("step %d: validation %s %.4f", state["step"], task.score_name, score)
            if state["best"] is None or (score > state["best"]) == task.higher_is_better:
                state["best"] = score
                save_folder_atomic(lambda tmp: (net.save_pretrained(tmp), tok.save_pretrained(tmp)), best_dir)

        state = train(ctx, net, task, self.config, step, end_of_epoch, "fine-tuning")
        (ctx.work_dir / "train_log.json").write_text(json.dumps({"steps": state["total"], "best_validation": state["best"], "lengths": lengths, "loss": state["history"]}))
        return model.model_copy(update={"path": best_dir, "num_labels": 1 if model.task == "text-regression" else len(data.label_names) or None})

    def _load(self, model: HFModel, data: Dataset) -> torch.nn.Module:
        if model.task == "causal-lm":
            return load_torch_model(model)
        labels = data.label_names
        if model.task == "text-regression":
            kwargs: dict[str, Any] = {"num_labels": 1, "problem_type": "regression"}
        else:
            kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
        if model.num_labels not in (None, kwargs["num_labels"]):
            kwargs["ignore_mismatched_sizes"] = True  # the head is replaced, on purpose
        return load_torch_model(model, **kwargs)
