"""The search genome: a sub-network architecture and its per-layer precision policy as one flat integer vector.

Per super-network layer: keep (when layers are skippable), head-choice index, FFN-choice index, then one
precision gene per linear group (qkv, attn_out, ffn_up, ffn_down); last, one precision gene for the head
(pooler / classifier / LM head). Genes that cannot matter (those of a skipped layer, the FFN precisions of a
removed FFN) are zeroed by ``canonical``, so two genomes describing the same candidate never get measured twice.
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
        self._layer_genes = (1 if space.skippable else 0) + 2 + len(LINEAR_GROUPS)

    @property
    def length(self) -> int:
        return self.space.num_layers * self._layer_genes + 1

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive integer bounds per gene."""
        top = [1] if self.space.skippable else []
        top += [len(self.space.head_choices) - 1, len(self.space.ffn_choices) - 1] + [len(self.precisions) - 1] * len(LINEAR_GROUPS)
        upper = np.array(top * self.space.num_layers + [len(self.precisions) - 1], dtype=int)
        return np.zeros_like(upper), upper

    def _split(self, genome: np.ndarray) -> tuple[np.ndarray, int]:
        genome = np.asarray(genome, dtype=int)
        if genome.shape != (self.length,):
            raise TailorfitError(f"a genome of this search space has {self.length} genes, got shape {genome.shape}", "the store or genome belongs to another search space")
        lower, upper = self.bounds()
        if (genome < lower).any() or (genome > upper).any():
            raise TailorfitError("a genome gene is out of range for this search space", "the store or genome belongs to another search space")
        rows = genome[:-1].reshape(self.space.num_layers, self._layer_genes)
        if not self.space.skippable:
            rows = np.concatenate([np.ones((len(rows), 1), dtype=int), rows], axis=1)
        return rows, int(genome[-1])

    def _join(self, rows: np.ndarray, head: int) -> np.ndarray:
        if not self.space.skippable:
            rows = rows[:, 1:]
        return np.concatenate([rows.reshape(-1), [head]]).astype(int)

    def canonical(self, genome: np.ndarray) -> np.ndarray:
        """The representative genome of a candidate: at least ``min_layers`` kept, irrelevant genes zeroed."""
        rows, head = self._split(genome)
        rows = rows.copy()
        missing = max(self.space.min_layers, 1) - int(rows[:, 0].sum())
        if missing > 0:  # keep the smallest sub-network's (evenly spaced) layers first, then the deepest
            order = [i for i, c in enumerate(self.space.smallest().layers) if c.keep]
            order += [i for i in reversed(range(len(rows))) if i not in order]
            for i in [i for i in order if not rows[i, 0]][:missing]:
                rows[i, 0] = 1
        rows[rows[:, 0] == 0, 1:] = 0
        if 0 in self.space.ffn_choices:
            removed = np.array([self.space.ffn_choices[f] == 0 for f in rows[:, 2]])
            rows[removed, 3 + LINEAR_GROUPS.index("ffn_up")] = 0
            rows[removed, 3 + LINEAR_GROUPS.index("ffn_down")] = 0
        return self._join(rows, head)

    def sample(self, rng: np.random.Generator, k: int, near_largest: float = 0.5) -> np.ndarray:
        """``k`` random canonical genomes, precision genes uniform. A ``near_largest`` share perturbs the unpruned
        architecture (each layer, with probability 1/layers, loses a head step, an FFN step or itself); the rest
        draw a depth uniformly, then the layers and widths. Uniform genes would keep half the layers on average
        and make most candidates far weaker than an accuracy constraint near the unpruned model allows."""
        s, (lower, upper) = self.space, self.bounds()
        n, out = s.num_layers, []
        for _ in range(k):
            rows, head = self._split(rng.integers(lower, upper + 1))
            rows = rows.copy()
            if rng.random() < near_largest:
                rows[:, 0], rows[:, 1], rows[:, 2] = 1, len(s.head_choices) - 1, len(s.ffn_choices) - 1
                for i in np.flatnonzero(rng.random(n) < 1 / n):
                    col = int(rng.integers(0 if s.skippable else 1, 3))  # 0: skip the layer, 1: heads, 2: FFN
                    rows[i, col] = max(rows[i, col] - 1, 0) if col else 0
            elif s.skippable:
                kept = rng.choice(n, size=int(rng.integers(s.min_layers, n + 1)), replace=False)
                rows[:, 0] = np.isin(np.arange(n), kept)
            out.append(self.canonical(self._join(rows, head)))
        return np.array(out, dtype=int)

    def decode(self, genome: np.ndarray) -> Candidate:
        genome = self.canonical(genome)
        rows, head = self._split(genome)
        s = self.space
        subnet = SubnetConfig(layers=[LayerChoice(keep=bool(k), heads=s.head_choices[h], ffn=s.ffn_choices[f]) for k, h, f, *_ in rows])
        layers = {}
        for new, i in enumerate(subnet.kept()):
            for g, gene in zip(LINEAR_GROUPS, rows[i, 3:]):
                layers[f"{new}.{g}"] = self.precisions[gene]
        policy = QuantizationPolicy(default=self.precisions[0], head=self.precisions[head], layers=layers)
        return Candidate(id=self.candidate_id(genome), subnet=subnet, policy=policy)

    def encode(self, subnet: SubnetConfig, precisions: dict[str, str]) -> np.ndarray:
        """The genome of ``subnet`` with ``precisions`` resolved against the extracted model (see ``QuantizationPolicy.resolve``)."""
        self.space.check(subnet)
        s = self.space
        index = {p: i for i, p in enumerate(self.precisions)}
        rows, kept = [], {old: new for new, old in enumerate(subnet.kept())}
        for i, c in enumerate(subnet.layers):
            genes = [index[precisions[f"{kept[i]}.{g}"]] for g in LINEAR_GROUPS] if c.keep else [0] * len(LINEAR_GROUPS)
            rows.append([int(c.keep), s.head_choices.index(c.heads), s.ffn_choices.index(c.ffn), *genes])
        return self.canonical(self._join(np.array(rows, dtype=int), index[precisions[HEAD]]))

    def candidate_id(self, genome: np.ndarray) -> str:
        """Stable short id of a canonical genome within this search space."""
        payload = self.space.model_dump_json() + repr(self.precisions) + ",".join(map(str, self.canonical(genome)))
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    def fingerprint(self) -> str:
        """Identifies the genome layout: a store written for another layout must not be resumed."""
        return hashlib.sha256((self.space.model_dump_json() + repr(self.precisions)).encode()).hexdigest()[:16]
