"""The search genome: a sub-network architecture and its per-layer precision policy as one flat integer vector.

First (when layers are skippable) one depth gene: the sub-network keeps ``min_layers + gene`` layers, dropping the
super-network's least influential first (``SearchSpace.layer_drop_order``), as LLaMA-NAS and Minitron prune depth:
per-layer keep bits would mostly spend the budget on sub-networks missing an important layer. Then per super-network
layer: head-choice index, FFN-choice index, one precision gene per linear group (qkv, attn_out, ffn_up, ffn_down);
last, one precision gene for the head (pooler / classifier / LM head). Genes that cannot matter (those of a dropped
layer, the FFN precisions of a removed FFN) are zeroed by ``canonical``, so two genomes describing the same candidate
never get measured twice.
"""
from __future__ import annotations

import hashlib

import numpy as np
from pydantic import BaseModel, ConfigDict

from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.families import LINEAR_GROUPS
from tailorfit.pipeline.models.policy import HEAD, QuantizationPolicy
from tailorfit.pipeline.supernet.space import LayerChoice, SearchSpace, SubnetConfig


class Candidate(BaseModel):
    """A decoded genome: the sub-network, and its policy numbered as the extracted model's layers (kept layers renumbered 0..n-1)."""

    model_config = ConfigDict(frozen=True)
    id: str
    subnet: SubnetConfig
    policy: QuantizationPolicy

    @property
    def quantized(self) -> bool:
        return any(p != "fp32" for p in (self.policy.head, *self.policy.layers.values()))


class Genome:
    """Encodes and decodes candidates of one search space with one list of precision choices."""

    def __init__(self, space: SearchSpace, precisions: tuple[str, ...] = ("fp32", "int8")):
        self.space = space
        self.precisions = tuple(precisions)
        self._layer_genes = 2 + len(LINEAR_GROUPS)
        self._depth_genes = 1 if space.skippable else 0

    @property
    def length(self) -> int:
        return self._depth_genes + self.space.num_layers * self._layer_genes + 1

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive integer bounds per gene."""
        s = self.space
        layer = [len(s.head_choices) - 1, len(s.ffn_choices) - 1] + [len(self.precisions) - 1] * len(LINEAR_GROUPS)
        upper = np.array([len(s.depths()) - 1] * self._depth_genes + layer * s.num_layers + [len(self.precisions) - 1], dtype=int)
        return np.zeros_like(upper), upper

    def _split(self, genome: np.ndarray) -> tuple[int, np.ndarray, int]:
        """(depth, per-layer rows, head precision) of a genome."""
        genome = np.asarray(genome, dtype=int)
        if genome.shape != (self.length,):
            raise TailorfitError(f"a genome of this search space has {self.length} genes, got shape {genome.shape}", "the store or genome belongs to another search space")
        lower, upper = self.bounds()
        if (genome < lower).any() or (genome > upper).any():
            raise TailorfitError("a genome gene is out of range for this search space", "the store or genome belongs to another search space")
        depth = self.space.depths()[genome[0] if self._depth_genes else 0]
        return depth, genome[self._depth_genes:-1].reshape(self.space.num_layers, self._layer_genes), int(genome[-1])

    def _join(self, depth: int, rows: np.ndarray, head: int) -> np.ndarray:
        depth_gene = [self.space.depths().index(depth)] if self._depth_genes else []
        return np.concatenate([depth_gene, rows.reshape(-1), [head]]).astype(int)

    def canonical(self, genome: np.ndarray) -> np.ndarray:
        """The representative genome of a candidate: genes of dropped layers and of removed FFNs zeroed."""
        depth, rows, head = self._split(genome)
        rows = rows.copy()
        rows[~np.array(self.space.kept_at_depth(depth))] = 0
        if 0 in self.space.ffn_choices:
            removed = np.array([self.space.ffn_choices[f] == 0 for f in rows[:, 1]])
            rows[removed, 2 + LINEAR_GROUPS.index("ffn_up")] = 0
            rows[removed, 2 + LINEAR_GROUPS.index("ffn_down")] = 0
        return self._join(depth, rows, head)

    def sample(self, rng: np.random.Generator, k: int, near_largest: float = 0.5) -> np.ndarray:
        """``k`` random canonical genomes, precision genes uniform. A ``near_largest`` share perturbs the unpruned
        architecture (each layer, with probability 1/layers, loses a head step, an FFN step or, once, the depth loses a
        layer); the rest draw every gene uniformly. Uniform genes alone would make most candidates far weaker than an
        accuracy constraint near the unpruned model allows."""
        s, (lower, upper) = self.space, self.bounds()
        n, out = s.num_layers, []
        for _ in range(k):
            depth, rows, head = self._split(rng.integers(lower, upper + 1))
            rows = rows.copy()
            if rng.random() < near_largest:
                depth, rows[:, 0], rows[:, 1] = n, len(s.head_choices) - 1, len(s.ffn_choices) - 1
                for i in np.flatnonzero(rng.random(n) < 1 / n):
                    col = int(rng.integers(0 if s.skippable else 1, 3))  # 0: one layer fewer, 1: heads, 2: FFN
                    if col:
                        rows[i, col - 1] = max(rows[i, col - 1] - 1, 0)
                    else:
                        depth = max(depth - 1, s.depths()[0])
            out.append(self.canonical(self._join(depth, rows, head)))
        return np.array(out, dtype=int)

    def decode(self, genome: np.ndarray) -> Candidate:
        genome = self.canonical(genome)
        depth, rows, head = self._split(genome)
        s = self.space
        subnet = SubnetConfig(layers=[LayerChoice(keep=k, heads=s.head_choices[row[0]], ffn=s.ffn_choices[row[1]])
                                      for k, row in zip(s.kept_at_depth(depth), rows)])
        layers = {}
        for new, i in enumerate(subnet.kept()):
            for g, gene in zip(LINEAR_GROUPS, rows[i, 2:]):
                layers[f"{new}.{g}"] = self.precisions[gene]
        policy = QuantizationPolicy(default=self.precisions[0], head=self.precisions[head], layers=layers)
        return Candidate(id=self.candidate_id(genome), subnet=subnet, policy=policy)

    def encode(self, subnet: SubnetConfig, precisions: dict[str, str]) -> np.ndarray:
        """The genome of ``subnet`` with ``precisions`` resolved against the extracted model (see ``QuantizationPolicy.resolve``)."""
        s = self.space
        s.check(subnet)
        depth = len(subnet.kept())
        if [c.keep for c in subnet.layers] != s.kept_at_depth(depth):
            raise TailorfitError(f"the sub-network keeps layers {subnet.kept()}, but at depth {depth} this search keeps "
                                 f"{[i for i, k in enumerate(s.kept_at_depth(depth)) if k]}", "drop layers in the super-network's drop order")
        index = {p: i for i, p in enumerate(self.precisions)}
        rows, kept = [], {old: new for new, old in enumerate(subnet.kept())}
        for i, c in enumerate(subnet.layers):
            genes = [index[precisions[f"{kept[i]}.{g}"]] for g in LINEAR_GROUPS] if c.keep else [0] * len(LINEAR_GROUPS)
            rows.append([s.head_choices.index(c.heads), s.ffn_choices.index(c.ffn), *genes])
        return self.canonical(self._join(depth, np.array(rows, dtype=int), index[precisions[HEAD]]))

    def candidate_id(self, genome: np.ndarray) -> str:
        """Stable short id of a canonical genome within this search space."""
        payload = self.space.model_dump_json() + repr(self.precisions) + ",".join(map(str, self.canonical(genome)))
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    def fingerprint(self) -> str:
        """Identifies the genome layout: a store written for another layout must not be resumed."""
        return hashlib.sha256((self.space.model_dump_json() + repr(self.precisions)).encode()).hexdigest()[:16]
