"""A per-layer latency table measured on the target (the HAT / FBNet approach), and what it predicts for a candidate.

Every transformer layer of a candidate is an attention block (query heads, precisions of ``qkv`` and ``attn_out``)
followed by an FFN block (width, precisions of ``ffn_up`` and ``ffn_down``). Each block shape x precision pair of
the search space is built once as a one-block model at the super-network's dimensions, lowered and (where int8)
quantized by the target itself, and timed on it interleaved with the unpruned FP32 model and with its largest layer
built as one model: each one-block model pays one runtime call, which a layer inside a model does not, and the two
blocks' medians less the layer's are that cost, taken off every entry. What the blocks do not cover (embeddings,
head, the call) is the reference's time less its layers'. A candidate's estimate is that fixed part plus its kept
layers' entries; divided by the table's own estimate of the unpruned FP32 model, it predicts the ratio the search
optimises.

Left out: the head's precision (pooler and classifier run on one token per sequence) and the cache and fusion
effects between neighbouring layers; the search's predictor calibrates what is left (``multiobjective.fit_predictor``).
This module is plain data: the timing, which needs torch and a target, is ``passes.search_tasks.time_latency_table``.
"""
from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.isotonic import isotonic_regression

from tailorfit.pipeline.search.genome import Candidate
from tailorfit.pipeline.supernet.space import LayerChoice, SearchSpace

Block = Literal["attention", "ffn"]
GROUPS: dict[str, tuple[str, str]] = {"attention": ("qkv", "attn_out"), "ffn": ("ffn_up", "ffn_down")}


class BlockShapes(BaseModel):
    """The super-network's dimensions a one-block model is built at, and how its family splits the linears."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden: int = Field(description="model width")
    head_dim: int = Field(description="size of one attention head")
    group_size: int = Field(description="query heads per KV head (grouped-query attention)")
    qkv_linears: int = Field(description="1: one fused Q|K|V projection; 3: separate Q, K and V")
    up_linears: int = Field(description="2: gated FFN (gate and up projections); 1: one up projection")
    sequence_length: int = Field(description="tokens per input (batch 1)")


class BlockSpec(BaseModel):
    """One table entry to time: a block at one width with one precision per linear group."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    block: Block
    width: int = Field(description="query heads (attention) or FFN neurons (ffn)")
    precisions: dict[str, str] = Field(description="linear group -> fp32 / int8, as a policy names them")

    @property
    def quantized(self) -> bool:
        return any(p != "fp32" for p in self.precisions.values())


class Entry(BlockSpec):
    runtime_precisions: dict[str, str] = Field(description="linear group -> what the runtime executes its linears in, read back from it")
    median_ms: float = Field(description="the one-block model's median latency")
    ms: float = Field(description="median_ms less the call's cost, made non-decreasing in width (timing noise aside, a wider block is never faster)")


class TimedBlocks(BaseModel):
    """What timing the specs on the target returns: medians per spec (in order), the largest layer's and the reference's."""

    median_ms: list[float]
    runtime_precisions: list[dict[str, str]]
    largest_layer_ms: float
    reference_ms: float
    seconds: float


class LatencyTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    measured: dict[str, str | int] = Field(description="what the timings were taken of and on: super-network, target, sequence length, threads")
    shapes: BlockShapes
    entries: list[Entry]
    largest_layer_ms: float = Field(description="the largest layer (full attention, then full FFN, fp32) as one model")
    call_ms: float = Field(description="what a one-block model pays for being a model: its two blocks' medians less largest_layer_ms (never below 0)")
    reference_ms: float = Field(description="the unpruned FP32 model, timed interleaved with the blocks")
    fixed_ms: float = Field(description="reference_ms less its layers' entries (never below 0): embeddings, head, the call itself")
    seconds: float = Field(description="wall time spent building and timing the table")

    def layer_ms(self, choice: LayerChoice, precisions: dict[str, str]) -> float:
        """One kept layer: its attention block, plus its FFN block unless the FFN is removed."""
        total = self._lookup("attention", choice.heads, precisions)
        return total + (self._lookup("ffn", choice.ffn, precisions) if choice.ffn else 0.0)

    def estimate_ms(self, candidate: Candidate) -> float:
        kept = [candidate.subnet.layers[i] for i in candidate.subnet.kept()]
        resolved = candidate.policy.resolve(len(kept))
        return self.fixed_ms + sum(self.layer_ms(c, {g: resolved[f"{n}.{g}"] for g in _ALL_GROUPS}) for n, c in enumerate(kept))

    def estimate_ratio(self, candidate: Candidate, space: SearchSpace) -> float:
        """The ratio the search optimises: the candidate's estimate over the table's own unpruned FP32 one."""
        return self.estimate_ms(candidate) / self.full_ms(space)

    def full_ms(self, space: SearchSpace) -> float:
        """The table's own estimate of the unpruned FP32 model (equal to ``reference_ms`` unless ``fixed_ms`` was clipped)."""
        fp32 = dict.fromkeys(_ALL_GROUPS, "fp32")
        return self.fixed_ms + sum(self.layer_ms(c, fp32) for c in space.largest().layers)

    def _lookup(self, block: Block, width: int, precisions: dict[str, str]) -> float:
        want = {g: precisions[g] for g in GROUPS[block]}
        for e in self.entries:
            if e.block == block and e.width == width and e.precisions == want:
                return e.ms
        raise KeyError(f"the latency table has no {block} entry of width {width} at {want}")


_ALL_GROUPS = (*GROUPS["attention"], *GROUPS["ffn"])


def table_specs(space: SearchSpace, precisions: tuple[str, ...]) -> list[BlockSpec]:
    """Every block shape x precision pair a candidate of ``space`` can hold (a removed FFN costs nothing: no entry)."""
    specs = []
    for block, widths in (("attention", space.head_choices), ("ffn", [w for w in space.ffn_choices if w])):
        for width in sorted(widths):
            for pair in itertools.product(precisions, repeat=2):
                specs.append(BlockSpec(block=block, width=width, precisions=dict(zip(GROUPS[block], pair))))
    return specs


def build_table(specs: list[BlockSpec], timed: TimedBlocks, space: SearchSpace, shapes: BlockShapes, measured: dict[str, str | int]) -> LatencyTable:
    """Entries less the call's cost, made non-decreasing in width per block and precision pair (isotonic
    regression: noise on a fast CPU can time a wider block faster); the fixed part from the reference."""
    fp32 = {(s.block, s.width): m for s, m in zip(specs, timed.median_ms) if not s.quantized}
    blocks = fp32["attention", max(space.head_choices)], fp32["ffn", max(space.ffn_choices)]
    call = float(np.clip(sum(blocks) - timed.largest_layer_ms, 0.0, min(blocks)))
    net = np.maximum(np.array(timed.median_ms) - call, 0.0)
    ms = np.zeros(len(specs))
    for key in {(s.block, tuple(s.precisions.values())) for s in specs}:
        rows = sorted((i for i, s in enumerate(specs) if (s.block, tuple(s.precisions.values())) == key), key=lambda i: specs[i].width)
        ms[rows] = isotonic_regression(net[rows], increasing=True)
    entries = [Entry(**s.model_dump(), runtime_precisions=rp, median_ms=m, ms=float(v))
               for s, rp, m, v in zip(specs, timed.runtime_precisions, timed.median_ms, ms)]
    table = LatencyTable(measured=measured, shapes=shapes, entries=entries, largest_layer_ms=timed.largest_layer_ms, call_ms=call, reference_ms=timed.reference_ms,
                         fixed_ms=0.0, seconds=timed.seconds)
    layers = table.full_ms(space)
    return table.model_copy(update={"fixed_ms": max(timed.reference_ms - layers, 0.0)})
