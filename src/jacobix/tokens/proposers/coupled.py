"""Coupled SJD: each position re-drafts with the same noise in every sweep (text or image tokens).

Plain SJD re-samples every unaccepted draft from the newest target with fresh randomness, so a
window never settles where the model is uncertain: the drafts keep changing under one another.
Here each position ``j`` of each row owns one exponential noise vector ``E_j`` (V,), drawn once,
and every sweep proposes ``d_j = argmax_v p_j(v) / E_j(v)`` (the exponential race, i.e. the
Gumbel-max trick). While the context of ``j`` stays the same, so does its draft; the window
iterates like greedy Jacobi on the noise-fixed map and converges.

It stays lossless. The draft tested at ``j`` is the race over the target of the previous sweep,
``p_s``, and ``E_j`` is independent of everything that decided ``p_s`` and when ``j`` is tested
(both depend on positions ``< j`` only, and proposals at ``j`` only influence positions ``> j``),
so ``d_j ~ p_s`` exactly, which is what the speculative rule ``min(1, p_t(d_j) / p_s(d_j))``
needs. Rejected, recovered and bonus tokens use fresh randomness as usual, and a position's
noise is never used again once it is committed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jacobix.core.sampling import Randomness, exponential
from jacobix.tokens.proposers.base import DraftSource
from jacobix.tokens.proposers.basic import DraftInit, JacobiProposer


class CoupledProposer(JacobiProposer):
    """:class:`~jacobix.tokens.proposers.basic.JacobiProposer` whose redrafts reuse one exponential
    noise vector per row and absolute position (drawn on first use from the decoding generator).

    Args:
        init: the draft rule for fresh slots.
    """

    sources = (DraftSource("coupled", 0.1),)

    def __init__(self, init: DraftInit | None = None) -> None:
        super().__init__(init)
        self.noise: Tensor | None = None  # (B, C, V) one race per row and position

    def begin(self, batch_size: int) -> None:
        self.noise = None

    def redraft(self, p_target: Tensor, positions: Tensor, generator: Randomness) -> Tensor:
        b, w, vocab = p_target.shape
        needed = int(positions.max()) + 1
        if self.noise is None or self.noise.shape[1] < needed or self.noise.shape[0] != b:
            self.noise = _extend(self.noise, b, max(needed, 2 * w), vocab, p_target.device, generator)
        race = self.noise.gather(1, positions[..., None].expand(b, w, vocab))  # (B, W, V)
        return (p_target / race.to(p_target.dtype)).argmax(-1)  # (B, W) the exponential race, fixed noise


def _extend(noise: Tensor | None, rows: int, length: int, vocab: int, device: torch.device,
            generator: Randomness) -> Tensor:
    """Noise (rows, >= length, V): the old positions kept, new ones drawn."""
    start = 0 if noise is None or noise.shape[0] != rows else noise.shape[1]
    fresh = exponential((rows, max(length - start, 0), vocab), torch.empty(0, device=device), generator)
    return fresh if start == 0 else torch.cat([noise, fresh], 1)


__all__ = ["CoupledProposer"]
