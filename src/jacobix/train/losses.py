"""Losses of the recipes, as pure functions of tensors (CLLM's consistency losses are in
:mod:`jacobix.train.consistency`).

Targets marked :data:`IGNORE` (-100, PyTorch's default ``ignore_index``) take no part in a mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100


def token_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits (..., V) against targets (...), over the targets that are not -100."""
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE)


def next_token_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict]:
    """:func:`token_ce` of ``model(inputs)`` (B, L, V) on targets (B, L): a loss for :func:`jacobix.train.loop.fit`."""
    inputs, targets = batch
    return token_ce(model(inputs), targets), {}


def take_rows(hidden: Tensor, index: Tensor) -> Tensor:
    """``hidden[b, index[b]]`` for hidden (B, L, dim) and index (B,); returns (B, dim)."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def distillation_loss(student: tuple[Tensor, ...], teacher: tuple[Tensor, ...]) -> Tensor:
    """CODI's KD: mean over layers of ``smooth_l1(student, teacher) / std(teacher)``; teacher detached.

    Args:
        student, teacher: one (B, dim) tensor per layer, at the answer prompt's last token.
    Returns:
        the scalar loss.
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"need one student and one teacher tensor per layer, got {len(student)} and {len(teacher)}")
    parts = [F.smooth_l1_loss(s, t.detach()) / t.detach().std().clamp_min(1e-6) for s, t in zip(student, teacher)]
    return torch.stack(parts).mean()


__all__ = ["IGNORE", "distillation_loss", "next_token_loss", "take_rows", "token_ce"]
