"""supernet: turns a model into an elastic super-network over layers, attention heads and FFN width.

Consumes: ``HFModel`` and ``Dataset`` (calibration batches from its training split). Produces: ``SuperNet`` —
the full-size weights with heads (KV groups under grouped-query attention) and FFN neurons reordered by
importance, so narrower choices keep the most important units; its ``SearchSpace``, whose depth choices drop
first the layers whose removal changes the model's output least; ``cost_model.json`` (analytic params / MACs); ``importance.json`` (the
scores and how they were measured). ``importance: activation`` (the default) measures all three on data
(``supernet/importance.py``); ``magnitude`` ranks units by weight magnitude and drops layers by position.
Post-condition: reordering leaves the full model's outputs unchanged (difference recorded).
"""
from __future__ import annotations

import json
import random
from typing import Literal

import torch
from pydantic import Field

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext, PortFacts
from tailorfit.pipeline.supernet.cost import CostModel
from tailorfit.pipeline.supernet.elastic import ElasticModel
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.families import family_by_name
from tailorfit.pipeline.models.data import chunks
from tailorfit.pipeline.models.handles import Dataset, HFModel, SuperNet
from tailorfit.pipeline.models.training import TaskData
from tailorfit.pipeline.models.regression import refuse_regression
from tailorfit.pipeline.models.loading import ExportWrapper, example_inputs, family_of, input_names, load_preprocessor, load_torch_model
from tailorfit.pipeline.supernet.space import SearchSpace, space_over


SIDECARS = ("search_space.json", "cost_model.json", "importance.json")  # files beside the weights that travel with them


class SupernetConfig(PassConfig):
    head_choices: list[int] | None = Field(default=None, description="query-head counts per layer (default: quarters of the KV groups)")
    ffn_choices: list[int] | None = Field(default=None, description="FFN widths (default: quarters of the width, multiples of ffn_step); 0 removes the FFN")
    ffn_step: int = Field(default=64, ge=1, description="default widths are multiples of this (INT4 group sizes must divide them)")
    min_layers: int | None = Field(default=None, ge=1, description="fewest layers a sub-network keeps (default: half)")
    skippable: bool = True
    importance: Literal["activation", "magnitude"] = Field(
        default="activation", description="activation: heads, neurons and layers scored on calibration data; magnitude: units by weight magnitude, layers by position")
    calibration_samples: int = Field(default=256, ge=1, description="training rows (causal-lm: windows) the importance is measured on")
    max_length: int = Field(default=128, ge=8, description="tokens per calibration example (causal-lm: per window)")
    depth_samples: int = Field(default=128, ge=1, description="calibration rows (the first of the sample) the depth order is measured on: about layers^2 / 2 forwards of them")


class Supernet(Pass):
    name = "supernet"
    version = 3  # 3: depth choices drop first the layers whose removal changes the output least
    Config = SupernetConfig
    packages = ("torch", "transformers")

    def requires(self, inputs: PortFacts) -> None:
        refuse_regression(inputs["model"].get("task"), "supernet")
        if "family" in inputs["model"] and inputs["model"]["family"] is None:  # refused before any step runs, with what was seen
            family_by_name(None, "a super-network", inputs["model"].get("family_refused"))
        if "dims" in inputs["model"]:  # the choices are checked against the model's shape before anything runs
            self._space(inputs["model"]["dims"])

    def _space(self, d: dict[str, int]) -> SearchSpace:
        c = self.config
        base = space_over(d, c.ffn_step, c.min_layers)
        space = base.model_copy(update={
            "head_choices": sorted(set(c.head_choices or base.head_choices)),
            "ffn_choices": sorted(set(c.ffn_choices or base.ffn_choices)),
            "skippable": c.skippable,
        })
        bad_heads = [h for h in space.head_choices if h % space.group_size or not 0 < h <= d["num_heads"]]
        if bad_heads:
            raise TailorfitError(f"head choices {bad_heads} are not multiples of the KV-group size {space.group_size} up to {d['num_heads']}", "fix head_choices")
        bad_ffn = [w for w in space.ffn_choices if not 0 <= w <= d["ffn_size"]]
        if bad_ffn:
            raise TailorfitError(f"FFN choices {bad_ffn} exceed the model's width {d['ffn_size']}", "fix ffn_choices")
        if space.min_layers > space.num_layers:
            raise TailorfitError(f"min_layers {space.min_layers} exceeds the model's {space.num_layers} layers", "lower min_layers")
        return space

    def run(self, ctx: PassContext, model: HFModel, data: Dataset) -> SuperNet:
        if data.task != model.task:
            raise TailorfitError(f"the dataset is for {data.task} but the model is a {model.task} model", "use a dataset of the model's task")
        net = load_torch_model(model)
        family = family_of(model, "a super-network")
        space = self._space(family.dims(net.config.to_dict()))
        names = input_names(net, model)
        example = example_inputs(model, net, names)
        wrapper = ExportWrapper(net, names).eval()
        with torch.inference_mode():
            before = wrapper(*example)
        elastic = ElasticModel(net, family, space)
        positions = getattr(net.config, "max_position_embeddings", None) or self.config.max_length
        rows, task = self._calibration(ctx, model, data, names, min(self.config.max_length, positions)) if self.config.importance == "activation" else ([], None)
        scores = elastic.importance([task.batch(part) for part in chunks(rows, 16)] if task else None)
        report = elastic.reorder(scores)
        if task and space.skippable:
            report.update(elastic.drop_order([task.batch(part) for part in chunks(rows[: self.config.depth_samples], 16)]))
            space = space.model_copy(update={"drop_order": report["drop_order"]})
            elastic.space = space
        with torch.inference_mode():
            drift = float((wrapper(*example) - before).abs().max())
        if drift > 1e-4:
            raise TailorfitError(f"importance reordering changed the model's outputs by {drift:.2e}", "report this as a bug with --debug output")
        out = ctx.work_dir / "supernet"
        net.save_pretrained(out)
        load_preprocessor(model).save_pretrained(out)
        (out / "search_space.json").write_text(space.model_dump_json(indent=1))
        (out / "cost_model.json").write_text(CostModel.measure(elastic).model_dump_json(indent=1))
        (out / "importance.json").write_text(json.dumps({**report, "max_abs_output_change": drift}, indent=1))
        ctx.log.info("super-network: %d layers, heads %s, FFN %s; importance by %s; layers dropped in order %s; reordering changed outputs by %.1e",
                     space.num_layers, space.head_choices, space.ffn_choices, self.config.importance, space.layer_drop_order(), drift)
        return SuperNet(path=out, source=model, space=space)

    def _calibration(self, ctx: PassContext, model: HFModel, data: Dataset, names: list[str], max_length: int) -> tuple[list[dict], TaskData]:
        """A seeded sample of the training split (examples no longer than the model's positions) and how to batch it."""
        task = TaskData.load(load_preprocessor(model), data, names, max_length)
        return random.Random(ctx.seed).sample(task.train, min(self.config.calibration_samples, len(task.train))), task


def load_supernet(handle: SuperNet) -> ElasticModel:
    """The elastic model of a ``SuperNet`` handle, at its largest config."""
    source = handle.source.model_copy(update={"path": handle.path})
    return ElasticModel(load_torch_model(source), family_of(handle.source), handle.space)
