"""Width policies: how many drafts of each candidate a pass feeds.

:class:`AdaptiveWidth` treats the draft count as a bandit's arm and a pass's committed tokens
as its reward, paid for with the pass's measured cost (:mod:`jacobix.tokens.width.costs`). It
plays the arm whose tokens per unit of cost is highest by a cautious estimate (the mean minus
one standard error, a source's per-slot prior counted as one pass), ``k = 0`` (sequential
decoding) included, so a width is played only once it has shown that it pays; where drafts do
not pay it rests at sequential decoding, doing no arithmetic until its next probe. Three things
make it find what a model can do without paying much to learn it:

- **Rewards measured at the arm's own width.** A Jacobi draft only improves while it is fed:
  after ``s`` sweeps a slot's draft is much better than a fresh one, so a distilled model
  commits ten tokens a pass at width 16 but little at width 4, where its far drafts are always
  young. The policy therefore keeps the tokens committed per pass by each arm as played (the
  first ``WARM_UP`` passes after widening, whose far drafts are young, are left out), not per-slot rates that
  would mix young and old drafts.
- **Censored sharing downwards.** A pass that fed ``f`` drafts and accepted ``a`` tells what a
  narrower arm ``k < f`` would have committed on it: ``min(a, k) + 1``. That is an optimistic
  estimate (a narrower arm's far drafts are younger), so an arm it rates worse than the current
  one is never worse in truth than rated, and one it rates better gets tried and then measured.
- **Probes on a doubling schedule.** Every so often the policy plays the arm worth probing for
  ``probe_passes`` passes (longer while it pays), with intervals that double (32, 64, 128, ...
  passes, up to 512), so over ``T`` passes it probes at most ``1 + log2(T / 32)`` times (then
  every 512 passes), and only arms whose failed probe, ``(probe_passes + 1) * (c(k) - 1)``
  one-token passes, costs at most 5% of the passes until the next probe (or 3 passes): being wrong
  about a wide window costs little (where wide passes are dear, as in large batches, narrow arms
  are probed first and wide ones as the intervals grow).

Arms are kept per *context*, the source of the row's first draft (the Jacobi iterate, or a text
or trajectory n-gram with its key length), because a matched n-gram pays where an iterate does
not. Choosing ``k`` from past passes only keeps greedy Jacobi exact and SJD lossless. The
arithmetic runs in NumPy on the host, every ``REFRESH`` passes, on the passes noted since: about
1-3% of a pass of the bundled 0.8M-parameter model on a CPU (``stats.schedule.policy_seconds``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from jacobix.tokens.proposers.base import DraftSource
from jacobix.tokens.width.costs import PROBE_WIDTHS, PassCosts

ARM_WIDTHS = PROBE_WIDTHS  # tokens per pass the adaptive policy chooses among
WARM_UP = 3  # passes after widening whose far drafts are still young: they inform narrower arms only
REFRESH = 8  # passes the speeds computed for the same contexts stand between probes
FIRST_PROBE_INTERVAL = 32  # passes before the second probe; each later interval doubles ...
PROBE_BUDGET = 0.05  # a probe may waste at most this share of the passes until the next one ...
PROBE_FLOOR = 3.0  # ... or this many one-token passes, whichever is more
LAST_PROBE_INTERVAL = 512  # ... up to this, so that a policy kept across many calls still notices a change


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
        decay: weight kept by old observations at each new pass (forgetting).
        slack: among arms whose cautious speed is within this fraction of the best, take the widest
            (fewer passes, same wall time).
        probe_passes: passes of one probe at least (the first ``WARM_UP``, whose far drafts are young,
            only informs narrower arms).
        confidence: standard errors subtracted from an arm's mean to play it, and added to
            choose what to probe.
        prior_weight: pseudo-passes behind each source's prior (the mean its per-slot prior implies).
    """

    decay: float = 0.99
    slack: float = 0.03
    probe_passes: int = 6
    confidence: float = 1.0
    prior_weight: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 < self.decay <= 1.0) or not (0.0 <= self.slack < 1.0):
            raise ValueError("AdaptiveConfig: decay in (0, 1], slack in [0, 1)")
        if isinstance(self.probe_passes, bool) or not isinstance(self.probe_passes, int) or self.probe_passes <= WARM_UP:
            raise ValueError(f"AdaptiveConfig: probe_passes must be an int > {WARM_UP} (its warm-up passes), got {self.probe_passes!r}")
        if not self.confidence >= 0.0 or not self.prior_weight > 0.0:
            raise ValueError("AdaptiveConfig: confidence >= 0 and prior_weight > 0")


@dataclass(frozen=True)
class _Plan:
    """What the policy's speeds say, refreshed every few passes: the best cautious speed, its arm,
    the arms within slack of it, each arm's optimistic speed and relative cost."""

    best: float
    best_arm: int
    near: tuple[int, ...]
    hopeful: list[float]
    cost: list[float]


class AdaptiveWidth:
    """Drafts per pass from committed tokens per pass and measured pass costs (a bandit over widths).

    Args:
        sources: the proposer's draft sources (contexts; their per-slot priors seed every arm).
        drafts: most drafts per pass (D).
        costs: relative cost of a pass by width (:class:`PassCosts`, or fixed calibrated costs).
        config: forgetting, slack, probing and confidence.
    """

    def __init__(self, sources: tuple[DraftSource, ...], drafts: int, costs: PassCosts,
                 config: AdaptiveConfig = AdaptiveConfig()) -> None:
        self.config, self.drafts, self.costs = config, drafts, costs
        self.sources = tuple(sources)
        self.arms = np.array(sorted({w - 1 for w in ARM_WIDTHS if w - 1 <= drafts} | {drafts}))  # (K,) draft counts
        self._reach = np.searchsorted(self.arms, np.arange(drafts + 1), side="right").tolist()  # arms <= fed, by fed
        self._cut = np.minimum(np.arange(drafts + 1)[:, None], self.arms) + 1.0  # (D+1, K) tokens arm k commits when a drafts pass
        rates = np.array([s.prior for s in self.sources], dtype=np.float64)  # (S,)
        self.prior = 1.0 + np.array([[(p ** np.arange(1, k + 1)).sum() for k in self.arms] for p in rates])  # (S, K)
        self.prior_square = self.prior ** 2 + (self.arms / 4.0) ** 2  # a wide spread around the prior
        # Own passes' weight, sum and sum of squares of tokens committed, and wider passes' cut weight
        # and sum, by statistic, context and arm; stored divided by the running decay `_scale`, so
        # forgetting is one multiplication a pass.
        self._stats = np.zeros((5, len(self.sources), len(self.arms)))
        self._scale = 1.0
        self._plan_key, self._plan_at, self._last_plan = b"", 0, None
        self._pending: list[tuple] = []  # passes observed and not yet added to the statistics
        self.passes = 0
        self.current = 0  # index into arms of the arm played last
        self._probe_arm, self._probe_left = 0, 0
        self._probe_done = [0, 0.0]  # the probe's passes observed so far, and their tokens per row (warm-up left out)
        self._next_probe, self._interval = 0, FIRST_PROBE_INTERVAL
        self._widened: deque[bool] = deque()  # per pass chosen and not yet observed: was it warming up?
        self._warming = 0  # passes of warm-up left after the last widening
        self.rows, self.laggard = 1, 1.0  # the batch the next choice is for (see straggle)

    def restart(self) -> None:
        """A new generation: what was learnt stays, and so does the probe schedule (a reused spec
        probes ever more rarely); the arm in play starts over at sequential."""
        self.current, self._probe_left, self._warming = 0, 0, 0
        self._widened.clear()

    @property
    def own_weight(self) -> np.ndarray:
        """(S, K) decayed count of passes played at each arm, by context."""
        self._absorb()
        return self._stats[0] * self._scale

    def bounds(self, contexts: slice | np.ndarray = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """(S, K) cautious and optimistic tokens committed per pass and row, by context and arm: the
        mean of the arm's own passes (with its prior as ``prior_weight`` pseudo-passes) minus and
        plus ``confidence`` standard errors; the optimistic one is at least what wider passes,
        cut to the arm, committed."""
        self._absorb()
        own_weight, own_sum, own_square, cut_weight, cut_sum = self._stats[:, contexts] * self._scale
        w = self.config.prior_weight
        n = own_weight + w
        mean = (own_sum + w * self.prior[contexts]) / n
        spread = self.config.confidence * np.sqrt(np.maximum((own_square + w * self.prior_square[contexts]) / n - mean ** 2, 0.0) / n)
        cut = np.where(cut_weight >= 0.5, cut_sum / np.maximum(cut_weight, 1e-12), 0.0)
        low, high = mean - spread, np.maximum(mean + spread, cut)
        low[..., 0] = high[..., 0] = 1.0
        return low, high

    def choose(self, source: Tensor, novel: Tensor) -> int:
        if self.drafts == 0 or source.shape[0] == 0:
            self._widened.append(False)
            return 0
        self.passes += 1
        context = source.numpy()[:, 0, 0]  # the first draft's source, per row
        if self._resting(context):  # sequential, nothing new learnt, no probe due: as cheap as AR
            self._widened.append(False)
            return 0
        plan = self._plan(context)
        if self._probe_left == 0 and self.passes >= self._next_probe:
            self._start_probe(plan)
        if self._probe_left and self._probing(plan):
            arm = self._probe_arm
        else:
            self._probe_left = 0
            arm = plan.near[-1]  # the widest of the arms within slack of the best: fewer passes, same wall time
        if arm > self.current:
            self._warming = WARM_UP
        self._widened.append(self._warming > 0)
        self._warming = max(self._warming - 1, 0)
        self.current = arm
        return int(self.arms[arm])

    def _resting(self, context: np.ndarray) -> bool:
        """True while the policy plays sequential decoding and nothing can change that before the next
        probe: no pass with drafts noted since the speeds were computed, and the same contexts."""
        if self.current != 0 or self._probe_left or self.passes >= self._next_probe or self._pending:
            return False
        return (int(context[0]) if len(context) == 1 else context.tobytes()) == self._plan_key

    def _plan(self, context: np.ndarray) -> _Plan:
        """The speeds for rows of ``context`` (A,). For the same contexts they are computed every
        ``REFRESH`` passes: evidence moves them slowly, and the arithmetic, run right after a
        forward has filled the caches, would otherwise cost a small model several % of a pass."""
        key = int(context[0]) if len(context) == 1 else context.tobytes()
        if key == self._plan_key and self.passes - self._plan_at < REFRESH:
            return self._last_plan
        self._absorb()
        cost = self._costs()
        if context.min() == context.max():  # one context: its own row of estimates
            low, high = self.bounds(context[0])
        else:
            share = np.bincount(context, minlength=len(self.sources)) / len(context)  # (S,)
            low, high = (share @ bound for bound in self.bounds())
        if self.rows > 1:
            low, high = self.straggle(low), self.straggle(high)
        cautious, hopeful = low / cost, high / cost  # (K,) tokens per unit of cost
        best = float(cautious.max())
        near = tuple(int(k) for k in np.nonzero(cautious >= best * (1 - self.config.slack))[0])
        self._last_plan = _Plan(best=best, best_arm=int(cautious.argmax()), near=near, hopeful=hopeful.tolist(),
                                cost=cost.tolist())
        self._plan_key, self._plan_at = key, self.passes
        return self._last_plan

    def straggle(self, rate: np.ndarray) -> np.ndarray:
        """Tokens per pass of a whole batch, which runs until its slowest row ends.

        Drafts help rows unevenly (an image that is hard to guess stays hard), and the batch's
        passes are those of its slowest row. The token problem measures ``laggard``: the drafts
        accepted so far by the row that accepted fewest, over the mean of all rows (1 where no row
        has accepted any yet). An arm's gain over one token a pass is scaled by it. Sequential
        decoding gains nothing and keeps its rate, so where the slowest rows gain little the batch
        rests at one token a pass (measured on the bundled image model: at batch 50 with guidance,
        coupled SJD at width 2 made 142 passes at 1.42x a one-token pass's cost, slower than AR's 195,
        although its rows' mean rate paid for the width).
        """
        return 1.0 + (rate - 1.0) * self.laggard

    def _costs(self) -> np.ndarray:
        """(K,) relative cost of each arm's pass."""
        return np.asarray(self.costs.table(self.drafts + 1))[self.arms]

    def _start_probe(self, plan: _Plan) -> None:
        """Probe the arm with the best optimistic speed, among those whose probe costs at most
        ``PROBE_BUDGET`` of the passes until the next one (or ``PROBE_FLOOR`` passes), if it could beat
        the best cautious speed;
        the next probe comes after twice as many passes as the last interval."""
        extra = (self.config.probe_passes + 1) * (np.asarray(plan.cost) - 1.0)  # (K,) one-token passes a failed probe wastes
        hopeful = np.where(extra <= max(PROBE_BUDGET * self._interval, PROBE_FLOOR), plan.hopeful, -np.inf)
        arm = int(hopeful.argmax())
        if hopeful[arm] > plan.best:
            self._probe_arm, self._probe_left, self._probe_done = arm, 1, [0, 0.0]
        self._next_probe = self.passes + self._interval
        self._interval = min(2 * self._interval, LAST_PROBE_INTERVAL)

    def _probing(self, plan: _Plan) -> bool:
        """Whether the probe goes on: for its first ``probe_passes`` passes, then as long as its own
        passes (warm-up left out) commit, per unit of cost, at least the best cautious speed."""
        passes, tokens = self._probe_done
        if passes < self.config.probe_passes:  # (its outcomes arrive one pass late)
            return True
        if plan.best_arm == self._probe_arm:  # proven: the probe's arm is now the policy's own choice
            return False
        measured = passes - WARM_UP
        if measured <= 0:
            return False
        rate = tokens / measured
        if self.rows > 1:
            rate = float(self.straggle(np.asarray(rate)))
        return rate / plan.cost[self._probe_arm] >= plan.best

    def observe(self, source: Tensor, matched: Tensor, fed: int) -> None:
        """Credit the pass's committed tokens per row to its arm, and cut to every narrower arm; old
        evidence fades, so an arm not played for long gets a wide margin and is probed again. The
        pass is noted here and added to the statistics when the speeds are next computed."""
        widened = self._widened.popleft() if self._widened else False
        self._scale *= self.config.decay
        if source.shape[0] == 0 or self.drafts == 0 or fed == 0:  # sequential passes commit one token: nothing to learn
            return
        context, accepted = source.numpy()[:, 0, 0], matched.numpy().max(1)  # (A,) each
        reach = self._reach[fed]  # arms 0 .. reach-1 are <= fed: this pass speaks for them
        played = reach - 1 if self.arms[reach - 1] == fed else None
        if played is not None and self._probe_left and played == self._probe_arm:
            done = self._probe_done
            done[1] += 0.0 if done[0] < WARM_UP else float(accepted.sum()) / len(accepted) + 1.0
            done[0] += 1
        self._pending.append((context, accepted, reach, None if widened else played, 1.0 / self._scale))

    def _absorb(self) -> None:
        """Add the passes noted since the last call to the statistics."""
        if self._scale < 1e-30:
            self._stats *= self._scale
            for i, noted in enumerate(self._pending):
                self._pending[i] = (*noted[:4], noted[4] * self._scale)
            self._scale = 1.0
        if self._pending and all(len(noted[0]) == 1 and noted[0][0] == self._pending[0][0][0] for noted in self._pending):
            self._absorb_one_row()
            return
        for context, accepted, reach, own, inverse_scale in self._pending:
            single = len(context) == 1 or context.min() == context.max()
            for c in (context[:1] if single else np.unique(context)):
                rows = accepted if single else accepted[context == c]  # (A_c,)
                weight = len(rows) / len(accepted) * inverse_scale
                stats = self._stats[:, c]  # (5, K)
                stats[3, :reach] += weight
                stats[4, :reach] += weight * self._cut[rows, :reach].mean(0)
                if own is not None:
                    committed = rows + 1.0
                    stats[0, own] += weight
                    stats[1, own] += weight * float(committed.mean())
                    stats[2, own] += weight * float((committed * committed).mean())
        self._pending.clear()

    def _absorb_one_row(self) -> None:
        """:meth:`_absorb` for passes of one row each, all in one context (batch 1): in a few array operations."""
        c = int(self._pending[0][0][0])
        accepted = np.array([int(noted[1][0]) for noted in self._pending])  # (n,)
        reach = np.array([noted[2] for noted in self._pending])  # (n,)
        weight = np.array([noted[4] for noted in self._pending])  # (n,)
        spoken = (np.arange(len(self.arms)) < reach[:, None]) * weight[:, None]  # (n, K) weight of each arm it speaks for
        self._stats[3, c] += spoken.sum(0)
        self._stats[4, c] += (spoken * self._cut[accepted]).sum(0)
        own = [(i, noted[3]) for i, noted in enumerate(self._pending) if noted[3] is not None]
        if own:
            index, arm = np.array(own).T  # (m,) each
            committed, w = accepted[index] + 1.0, weight[index]
            for row, values in ((0, w), (1, w * committed), (2, w * committed * committed)):
                self._stats[row, c] += np.bincount(arm, weights=values, minlength=len(self.arms))
        self._pending.clear()


def novel_prefixes(tokens: Tensor) -> Tensor:
    """(B, R, D) True where candidate ``i`` is the first with its ``t + 1``-token prefix.

    Worked example, one row: candidates ``a b``, ``a c``, ``a b`` give
    ``[[T, T], [F, T], [F, F]]``: only the first ``a`` and the first ``a b``, ``a c`` count.
    """
    r = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None]  # (B, R, R, D)
    shared = same.long().cumprod(-1).bool() & torch.ones(r, r, dtype=torch.bool, device=tokens.device).tril(-1)[None, :, :, None]
    return ~shared.any(2)


__all__ = ["ARM_WIDTHS", "AdaptiveConfig", "AdaptiveWidth", "FixedWidth", "WidthPolicy", "novel_prefixes"]
