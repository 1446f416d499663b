"""Losses for distilling a student from a teacher of the same hidden width: softened logits and hidden states."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at a temperature, scaled by T^2 so gradients keep their size."""
    vocab = student.shape[-1]
    return F.kl_div(
        F.log_softmax(student.reshape(-1, vocab) / temperature, -1), F.softmax(teacher.reshape(-1, vocab) / temperature, -1), reduction="batchmean"
    ) * temperature**2


def hidden_state_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], kept: list[int]) -> torch.Tensor:
    """Mean squared error of the student's layer outputs against the teacher's at the layers it kept, each relative to
    the teacher's mean square (decoders' hidden states reach magnitudes in the hundreds). The last state, the one the
    head reads (after a final norm in decoders), is matched to the teacher's last whichever layer produced it."""
    pairs = [(student[j + 1], teacher[layer + 1]) for j, layer in enumerate(kept[:-1])] + [(student[-1], teacher[-1])]
    return sum(F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-6) for s, t in pairs) / len(pairs)


def student_loss(student: Any, teacher: Any, kept: list[int] | None, weight: float, hidden_weight: float, temperature: float) -> torch.Tensor:
    """``(1 - weight)`` x the student's task loss + ``weight`` x (logit distillation + ``hidden_weight`` x hidden-state
    loss at the ``kept`` teacher layers; none when the layer mapping is unknown). Both are Hugging Face outputs, the
    teacher's with hidden states, the student's too when ``kept`` is given."""
    soft = distillation_loss(student.logits, teacher.logits, temperature)
    if kept is not None and hidden_weight:
        soft = soft + hidden_weight * hidden_state_loss(student.hidden_states, teacher.hidden_states, kept)
    return (1 - weight) * student.loss + weight * soft
