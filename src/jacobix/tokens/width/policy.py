"""Width policies: how many drafts of each candidate a pass feeds.

Feeding ``k`` drafts whose slots pass with conditional rates ``a_0, a_1, ...`` commits on average
``E(k) = 1 + sum_{j<k} prod_{i<=j} a_i`` tokens. With ``R`` candidates per row, those whose
first ``t + 1`` drafts differ match disjointly, so the chance that some candidate matches
``t + 1`` drafts is the sum over the first candidate of each distinct prefix of its product of
rates. :class:`AdaptiveWidth` picks the ``k`` (0 .. D) that maximises ``sum over rows E_b(k) /
cost(k + 1)``; ``k = 0`` is sequential decoding, so where drafts do not pay it runs at AR
speed. Rates are kept per draft source (the proposer's ``sources``) and slot, with a prior and
exponential forgetting. Choosing ``k`` from past passes only keeps greedy Jacobi exact and SJD
lossless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from jacobix.tokens.width.costs import PassCosts
from jacobix.tokens.proposers.base import DraftSource

REFRESH = 8  # passes a choice stands for the same drafts when nothing new was observed
EXPLORE_PASSES = 2  # an exploration feeds drafts twice: the second tests the first's outputs (Jacobi)


class WidthPolicy(Protocol):
    """Chooses the drafts fed per pass and learns from what happened."""

    def choose(self, source: Tensor, novel: Tensor) -> int:
        """Drafts to feed (0 .. D) given active rows' draft sources (A, R, D) and novelty flags (A, R, D)."""
        ...

    def observe(self, source: Tensor, matched: Tensor, fed: int) -> None:
        """Active rows' sources (A, R, D) and the drafts each candidate row matched (A, R)."""
        ...


class FixedWidth:
    """Feed every draft, every pass."""

    def __init__(self, drafts: int) -> None:
        self.drafts = drafts

    def choose(self, source: Tensor, novel: Tensor) -> int:
        return self.drafts

    def observe(self, source: Tensor, matched: Tensor, fed: int) -> None:
        pass


@dataclass(frozen=True, kw_only=True)
class AdaptiveConfig:
    """Settings of :class:`AdaptiveWidth`.

    Attributes:
        prior_weight: pseudo-observations behind each source's prior; as old observations decay
            the prior regains weight, so a source that stopped being tried gets tried again.
        decay: weight kept by old observations at each new pass (forgetting).
        slack: among draft counts whose expected speed is within this fraction of the best and no
            lower than sequential decoding's, take the largest (fewer passes, same wall time).
        explore_every: when no draft has been fed for this many passes, two passes feed the draft
            count that would be best if drafts were fed, so that a pessimistic prior gets tested.
    """

    prior_weight: float = 2.0
    decay: float = 0.97
    slack: float = 0.03
    explore_every: int = 32

    def __post_init__(self) -> None:
        if self.prior_weight <= 0 or not (0.0 < self.decay <= 1.0) or not (0.0 <= self.slack < 1.0):
            raise ValueError("AdaptiveConfig: prior_weight > 0, decay in (0, 1], slack in [0, 1)")
        if self.explore_every < 1:
            raise ValueError(f"AdaptiveConfig: explore_every must be >= 1 pass, got {self.explore_every}")


class AdaptiveWidth:
    """Drafts per pass from observed pass rates and measured pass costs.

    The arithmetic runs in NumPy on the host: it is a few dozen numbers per pass, and torch's
    per-call overhead would cost a small model more than the choice can save.

    Args:
        sources: the proposer's draft sources (their priors seed the rates).
        drafts: most drafts per pass (D).
        costs: seconds per pass by width, refined by every pass (:class:`PassCosts`).
        config: priors' weight, forgetting and slack.
    """

    def __init__(self, sources: tuple[DraftSource, ...], drafts: int, costs: PassCosts,
                 config: AdaptiveConfig = AdaptiveConfig()) -> None:
        self.config, self.drafts, self.costs = config, drafts, costs
        self.prior = np.repeat(np.array([[s.prior] for s in sources], dtype=np.float64), max(drafts, 1), 1)  # (S, D)
        self.passed = np.zeros_like(self.prior)  # (S, D) decayed observations
        self.tested = np.zeros_like(self.prior)
        self.cost: np.ndarray | None = None  # (D+1,) relative cost by drafts fed, as last read
        self.passes = 0
        self._key: tuple | None = None  # the drafts of the last computed choice
        self._chosen_at, self._choice, self._explore = 0, 0, 1
        self._tried_at = 0  # the last pass that fed drafts
        self._exploring = 0  # passes of drafts still to feed against the policy's own choice

    def rates(self) -> np.ndarray:
        """(S, D) current pass-rate estimate per source and slot."""
        weight = self.config.prior_weight
        return (self.passed + weight * self.prior) / (self.tested + weight)

    def choose(self, source: Tensor, novel: Tensor) -> int:
        if self.drafts == 0 or source.shape[0] == 0:
            return 0
        sources, novelty = source.numpy(), novel.numpy()
        key = (sources.shape, sources.tobytes(), novelty.tobytes())
        self.passes += 1
        # Between observations the rates only decay a little: the last choice for the same drafts
        # stands for up to REFRESH passes (the arithmetic would cost a small model ~3% of a pass).
        if key != self._key or self.passes - self._chosen_at >= REFRESH:
            self.cost = np.array(self.costs.table(self.drafts + 1))
            slot_rate = self.rates()[sources, np.arange(self.drafts)]  # (A, R, D)
            reach = np.minimum((np.cumprod(slot_rate, -1) * novelty).sum(1), 1.0)  # (A, D) P(some candidate matches t+1)
            expected = 1.0 + np.concatenate([[0.0], reach.sum(0).cumsum()]) / reach.shape[0]  # (D+1,) per row
            speed = expected / self.cost
            floor = max(speed.max() * (1 - self.config.slack), speed[0])  # never expected slower than k = 0
            self._key, self._chosen_at = key, self.passes
            self._choice = int(np.nonzero(speed >= floor)[0].max())
            self._explore = 1 + int(speed[1:].argmax())  # the best draft count, were drafts to be fed
        if self._choice == 0 and self.passes - self._tried_at >= self.config.explore_every:
            self._exploring = EXPLORE_PASSES  # now and then test the drafts anyway: the priors may be wrong
        if self._exploring:
            self._exploring -= 1
            self._tried_at = self.passes
            return self._explore
        return self._choice

    def observe(self, source: Tensor, matched: Tensor, fed: int) -> None:
        """Slot ``i`` of a candidate row counts as tested when it was fed and every slot before it passed."""
        self.passed *= self.config.decay
        self.tested *= self.config.decay
        if fed == 0 or source.shape[0] == 0:
            return
        self._key = None  # new evidence: decide afresh
        self._tried_at = self.passes
        slots = np.arange(fed)  # only fed slots can be tested
        matched = matched.numpy()[..., None]  # (A, R, 1)
        tested = slots <= matched  # (A, R, fed)
        passed = slots < matched
        index = source.numpy()[..., :fed]  # (A, R, fed)
        np.add.at(self.passed, (index, np.broadcast_to(slots, index.shape)), passed)
        np.add.at(self.tested, (index, np.broadcast_to(slots, index.shape)), tested)


def novel_prefixes(tokens: Tensor) -> Tensor:
    """(B, R, D) True where candidate ``i`` is the first with its ``t + 1``-token prefix.

    Worked example, one row: candidates ``a b``, ``a c``, ``a b`` give
    ``[[T, T], [F, T], [F, F]]``: only the first ``a`` and the first ``a b``, ``a c`` count.
    """
    r = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None]  # (B, R, R, D)
    shared = same.long().cumprod(-1).bool() & torch.ones(r, r, dtype=torch.bool, device=tokens.device).tril(-1)[None, :, :, None]
    return ~shared.any(2)


__all__ = ["AdaptiveConfig", "AdaptiveWidth", "FixedWidth", "WidthPolicy", "novel_prefixes"]
