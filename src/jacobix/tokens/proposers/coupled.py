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

from jacobix.core.acceptance import maximal_coupling
from jacobix.core.engine import Drafts
from jacobix.core.sampling import Randomness, exponential, sample
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
        self.filled: list[int] = []  # positions of each row's race drawn so far

    def begin(self, batch_size: int) -> None:
        self.noise, self.filled = None, []

    def redraft(self, p_target: Tensor, positions: Tensor, generator: Randomness, previous: Drafts | None = None) -> Tensor:
        b, w, vocab = p_target.shape
        if self.noise is None or self.noise.shape[0] != b:
            self.noise, self.filled = torch.empty(b, 0, vocab, device=p_target.device), [0] * b
        needed = (positions.max(dim=1).values + 1).tolist()  # (B,) positions each row's race must cover
        if any(n > f for n, f in zip(needed, self.filled)):
            self._grow(needed, w, generator)
        race = self.noise.gather(1, positions[..., None].expand(b, w, vocab))  # (B, W, V)
        return (p_target / race.to(p_target.dtype)).argmax(-1)  # (B, W) the exponential race, fixed noise

    def _grow(self, needed: list[int], width: int, generator: Randomness) -> None:
        """Extend the rows whose positions outgrew their noise, each by an amount set by that row alone
        and drawn from its own generator (when given one per row): a row's noise, hence its sample,
        does not depend on the batch it runs in."""
        rows = []
        for row, (need, have) in enumerate(zip(needed, self.filled)):
            extra = max(need, have + max(2 * width, 64)) - have if need > have else 0  # grow rarely: each growth copies
            g = generator[row] if isinstance(generator, (list, tuple)) else generator
            rows.append(exponential((extra, self.noise.shape[2]), self.noise, g))
            self.filled[row] = have + extra
        length = max(self.filled)
        grown = torch.ones(len(rows), length, self.noise.shape[2], device=self.noise.device)  # never read past filled
        for row, fresh in enumerate(rows):
            have = self.filled[row] - len(fresh)
            grown[row, :have] = self.noise[row, :have]
            grown[row, have : self.filled[row]] = fresh
        self.noise = grown


class ContinuationProposer(JacobiProposer):
    """SJD-PAC's adaptive continuation (MC-SJD's maximal coupling): a redraft keeps the old draft
    with probability ``min(1, p_new(d) / p_old(d))`` and otherwise draws from the residual
    (:func:`~jacobix.core.acceptance.maximal_coupling`), so a draft survives a pass unless the new
    target moved away from it. Each redraft follows the new target exactly and carries it as its
    law (the faults section 11 of ALGORITHMS.md warns of: keeping the old law is biased).

    Args:
        init: the draft rule for fresh slots.
    """

    sources = (DraftSource("continued", 0.1),)

    def redraft(self, p_target: Tensor, positions: Tensor, generator: Randomness, previous: Drafts | None = None) -> Tensor:
        if previous is None or previous.p_draft is None:
            return sample(p_target, generator)
        kept = previous.values.shape[1]  # the last slot (the bonus slot) had no draft
        head = maximal_coupling(p_target[:, :kept], previous.values, previous.p_draft, generator)  # (B, W - 1)
        return torch.cat([head, sample(p_target[:, kept:], generator)], 1)


__all__ = ["ContinuationProposer", "CoupledProposer"]
