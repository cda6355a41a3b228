"""Consistency-distillation losses (CLLM, arXiv 2403.00835, section 3.2), as pure tensor functions.

A block of ``n`` tokens is predicted by ``n`` logits: prediction ``i`` (of block token ``i``) reads
the context and block tokens ``0 .. i-1``. On a Jacobi state ``y`` those tokens may be wrong; on
the fixed point ``y*`` they are the model's own greedy tokens. Consistency distillation makes the
prediction from ``y`` match the (detached) prediction from ``y*``, so that one sweep from any
state lands closer to the fixed point:

- global consistency (CLLM eq. 5): ``sum_i KL(q_sg(.|y*_<i) || q(.|y_<i))``,
- local consistency (eq. 6; the authors' code lacks it): the same between adjacent states,
  the later one detached,
- the AR loss (eq. 7): cross-entropy on the ground-truth continuation, prompt tokens masked
  (the authors' code trains on them), with label smoothing.

Predictions whose context equals the target's (up to and including the first mismatch) carry
no signal, their logits being equal, and are masked, as are slots past the block's length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def prediction_mask(state: Tensor, target: Tensor, length: Tensor) -> Tensor:
    """(B, n) True for the predictions the consistency loss trains.

    Prediction ``i`` is trained when its context ``state[:, :i]`` differs from ``target[:, :i]``
    (``i`` after the first mismatch) and ``i < length``.

    Example: state ``a b X d``, target ``a b c d``, length 4: the first mismatch is slot 2, so only
    prediction 3 (whose context holds the wrong ``X``) is trained: mask ``F F F T``.

    Args:
        state: (B, n) block tokens of a Jacobi state.
        target: (B, n) block tokens of the target (the fixed point, or the next state).
        length: (B,) valid tokens per block.
    """
    n = state.shape[1]
    slots = torch.arange(n, device=state.device)  # (n,)
    valid = slots[None, :] < length[:, None]  # (B, n)
    differs = (state != target) & valid  # (B, n)
    first = torch.where(differs.any(1), differs.long().argmax(1), n)  # (B,) first mismatching slot
    return (slots[None, :] > first[:, None]) & valid


def consistency_loss(student_logits: Tensor, target_logits: Tensor, mask: Tensor, *,
                     count: Tensor | None = None) -> Tensor:
    """Mean over masked predictions of ``KL(softmax(target) || softmax(student))``; 0 when none is masked.

    Args:
        student_logits: (B, n, V) the student's logits on a Jacobi state (with gradient).
        target_logits: (B, n, V) logits on the target state; detached here.
        mask: (B, n) predictions to train (:func:`prediction_mask`).
        count: divide the sum by this instead of ``mask.sum()`` (a data-parallel rank divides by
            its share of the global count, so averaging over ranks gives the global mean).
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1)  # (B, n, V)
    log_p = F.log_softmax(target_logits.detach().float(), dim=-1)  # (B, n, V)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, n)
    return (kl * mask).sum() / (mask.sum() if count is None else count).float().clamp_min(1e-9)


def ar_loss(logits: Tensor, targets: Tensor, mask: Tensor, *, label_smoothing: float = 0.1,
            count: Tensor | None = None) -> Tensor:
    """Cross-entropy of next-token predictions on masked positions (the continuation, not the prompt).

    Args:
        logits: (B, L, V) predictions; position ``t`` predicts ``targets[:, t]``.
        targets: (B, L) next tokens.
        mask: (B, L) True where ``targets`` is a ground-truth continuation token.
        label_smoothing: CLLM uses 0.1.
        count: divide the sum by this instead of ``mask.sum()`` (see :func:`consistency_loss`).
    Returns:
        the mean over masked positions (0 when none is).
    """
    if not bool(mask.any()):
        return logits.sum() * 0.0
    total = F.cross_entropy(logits[mask].float(), targets[mask], label_smoothing=label_smoothing, reduction="sum")
    return total / (mask.sum() if count is None else count).float().clamp_min(1e-9)


def block_logits(logits: Tensor, context_length: Tensor, n: int) -> Tensor:
    """(B, n, V) the logits predicting a block that follows ``context_length`` (B,) tokens.

    Row ``b`` is ``context (context_length[b]) ++ block (n)`` (right-padded); its block predictions
    are at positions ``context_length[b] - 1 .. context_length[b] + n - 2``.
    """
    index = context_length[:, None] - 1 + torch.arange(n, device=logits.device)  # (B, n)
    return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))


__all__ = ["ar_loss", "block_logits", "consistency_loss", "prediction_mask"]
