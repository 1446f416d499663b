"""The kinds of handle the built-in passes exchange: models, datasets, lowered models, super-networks, searches,
packaged runs. Each is a ``Handle`` (``pipeline/handles.py``): frozen, pointing at files, keyed by the step that made it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tailorfit.pipeline.handles import Handle
from tailorfit.pipeline.models.policy import QuantizationPolicy
from tailorfit.pipeline.supernet.space import SearchSpace, SubnetConfig

Task = Literal["text-classification", "text-regression", "causal-lm", "image-classification"]


class Selection(BaseModel):
    """Why a model exists: the search candidate ``select`` picked, the policy it was searched with, and what the
    search measured for it (validation split), to set beside the final measurements."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    candidate: str
    rule: str
    origin: str  # cache key of the model the super-network was built from: its FP32 / INT8 branches are the baselines
    subnet: SubnetConfig
    policy: QuantizationPolicy
    search_metrics: dict[str, Any]


class HFModel(Handle):
    """A Hugging Face model directory (config, weights, tokenizer) and its task."""

    path: Path
    task: Task
    family: str | None  # None: no family module describes the architecture, nor its structure (whole-model steps only)
    family_spec: dict[str, Any] | None = None  # a family found by structure (``families/discovery.py``), as plain data
    name: str
    num_labels: int | None = None
    notes: list[str] = []  # caveats every model card derived from it must state
    selection: Selection | None = None  # set by ``select``: the searched candidate this model is
    distillation: dict[str, Any] | None = None  # set by ``distill``: the teacher, steps, validation score before and after


class Dataset(Handle):
    """Seeded train / validation / test splits as JSONL files, each row with a stable ``id``."""

    path: Path
    task: Task
    label_names: list[str] = []
    sizes: dict[str, int]


class Lowered(Handle):
    """A model lowered to one target: its runtime files plus what was done to it and measured on it.

    ``evaluate`` and ``benchmark`` return the same model with ``metrics`` and ``reports`` extended,
    so a chain lower → quantize → evaluate → benchmark ends in one handle holding everything.
    """

    target: str
    files: list[Path]
    candidate: str
    precision: str  # "fp32", "int8" or "mixed"
    inference_precision: str  # what the runtime computes non-quantized ops in (f32 / bf16)
    inputs: list[str]  # the graph's input names, in order
    policy: dict[str, str] | None = None  # "layer.group" -> precision, resolved against the model
    source: HFModel
    metrics: dict[str, Any] = {}
    reports: dict[str, Path] = {}

    def measured(self) -> dict[str, dict[str, Any]]:
        if not self.metrics:
            return {}
        return {self.candidate: {self.target: {"precision": self.precision, "inference_precision": self.inference_precision, **self.metrics}}}

    def size_bytes(self) -> int:
        """The runtime files' size on disk: what a deployment ships."""
        return sum(f.stat().st_size for f in self.files)


class SuperNet(Handle):
    """An elastic super-network: its (importance-reordered) full-size weights as a model folder, and its search space."""

    path: Path
    source: HFModel
    space: SearchSpace


class SearchResult(Handle):
    """A finished search: its folder (evaluation store, Pareto front, history, plots) and the front itself.

    ``front`` rows: ``{id, subnet, policy, metrics}`` with the policy numbered as the extracted model's layers;
    ``baselines``: the unpruned model's stored records (``fp32``, ``int8``), measured in the same search.
    """

    path: Path
    supernet: SuperNet
    target: str
    objectives: list[str]
    baselines: dict[str, dict[str, Any]]
    front: list[dict[str, Any]]


class Artifact(Handle):
    """A packaged run directory: candidates with their runtime files, metrics and model cards."""

    path: Path
    candidates: list[str]

