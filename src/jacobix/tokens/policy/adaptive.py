"""Choosing how many drafts to evaluate per pass, from measured pass cost and observed acceptance.

A pass over ``w`` tokens costs ``cost(w)`` (measured once per model, device and dtype); feeding
``k`` drafts whose slots pass with conditional rates ``a_0, a_1, ...`` commits on average
``E(k) = 1 + sum_{j<k} prod_{i<=j} a_i`` tokens. :class:`WindowController` picks the ``k``
(0 .. window-1) that maximises ``sum over rows E_b(k) / cost(k + 1)``; ``k = 0`` is sequential
decoding, so a model/device where drafts do not pay runs at AR speed. Rates are kept per draft
source (n-gram pool or Jacobi carry-over) and per slot, with a prior and exponential forgetting.

:class:`ScheduledProblem` wraps a token problem: it substitutes pool drafts, feeds the first
``k`` drafts to the inner sweep and carries the others unevaluated. Choosing ``k`` from past
passes only keeps greedy Jacobi exact and SJD lossless.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor

from jacobix.core.engine import Acceptance, Drafts, FixedPointState, JacobiProblem
from jacobix.tokens.proposers.ngram import LookaheadConfig, RowPools, pick
from jacobix.core.timing import clock

JACOBI, POOL = 0, 1  # draft sources; pool drafts of RowPools key index i are source POOL + i


@dataclass(frozen=True, kw_only=True)
class AdaptiveConfig:
    """Settings of the window controller.

    Attributes:
        max_window: the largest window (tokens per pass) considered.
        probe_widths: widths whose pass cost is measured; others are interpolated.
        repeats: timed passes per width (the minimum is kept: load only adds time).
        jacobi_prior: acceptance rate per slot assumed for Jacobi carry-over drafts before any
            observation.
        text_prior: the same for drafts from the text pool, by key index (longest key first;
            later keys use the last entry). A longer matching key predicts better: on SmolLM2 a
            first text-pool draft passed 78% / 25% / 23% of the time for keys of 3 / 2 / 1 tokens.
        trajectory_prior: the same for drafts from the trajectory pool (5-15% on SmolLM2).
        prior_weight: pseudo-observations behind the prior; as old observations decay the prior
            regains weight, so a source that stopped being tried gets tried again.
        decay: weight kept by old observations at each new pass (forgetting).
        slack: among the draft counts whose expected speed is within this fraction of the best
            and no lower than sequential decoding's, take the largest (fewer passes for about
            the same wall time).
    """

    max_window: int = 16
    probe_widths: tuple[int, ...] = (1, 2, 4, 8, 16)
    repeats: int = 3
    jacobi_prior: float = 0.1
    text_prior: tuple[float, ...] = (0.7, 0.5, 0.3)
    trajectory_prior: float = 0.1
    prior_weight: float = 2.0
    decay: float = 0.97
    slack: float = 0.03

    def __post_init__(self) -> None:
        if self.max_window < 1 or min(self.probe_widths) != 1 or self.repeats < 1:
            raise ValueError("AdaptiveConfig: max_window >= 1, probe_widths must include 1, repeats >= 1")
        priors = (self.jacobi_prior, *self.text_prior, self.trajectory_prior)
        if not self.text_prior or not all(0.0 <= p < 1.0 for p in priors) or not (0.0 < self.decay <= 1.0):
            raise ValueError("AdaptiveConfig: prior rates in [0, 1) (text_prior: at least one), decay in (0, 1]")


@torch.inference_mode()
def measure_costs(model, widths: tuple[int, ...], repeats: int, device: torch.device) -> dict[int, float]:
    """Seconds of one pass of each width (B=1), after a 64-token context; the minimum of ``repeats``."""
    context = 64
    cache = model.new_cache(1, context + max(widths) + 1)
    tokens = torch.randint(model.vocab_size, (1, context + max(widths)), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    model.forward(tokens[:, :context], torch.arange(context, device=device)[None], cache)
    costs = {}
    for _ in range(repeats):
        for w in widths:
            positions = context + torch.arange(w, device=device)[None]  # (1, w)
            start = clock(device)
            model.forward(tokens[:, context : context + w], positions, cache)
            costs[w] = min(costs.get(w, float("inf")), clock(device) - start)
    return costs


_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_costs(model, config: AdaptiveConfig, device: torch.device, dtype: torch.dtype) -> dict[int, float]:
    """:func:`measure_costs` once per underlying model object, device and dtype."""
    owner = getattr(model, "model", model)  # the wrapped module of an adapter
    per_model = _MEASURED.setdefault(owner, {})
    key = (str(device), str(dtype), config.probe_widths)
    if key not in per_model:
        per_model[key] = measure_costs(model, config.probe_widths, config.repeats, device)
    return per_model[key]


def interpolate(costs: dict[int, float], width: int) -> float:
    """Cost of ``width`` from measured widths (linear between them, flat beyond the largest)."""
    known = sorted(costs)
    if width in costs:
        return costs[width]
    upper = next((w for w in known if w > width), None)
    if upper is None:
        return costs[known[-1]] * width / known[-1]
    lower = max(w for w in known if w < width)
    t = (width - lower) / (upper - lower)
    return costs[lower] * (1 - t) + costs[upper] * t


def _pool_prior(config: AdaptiveConfig, key_index: int, keys: int) -> float:
    """Prior of a pool draft found with ``key_index`` (text pool below ``keys``, trajectory pool above)."""
    if key_index >= keys:
        return config.trajectory_prior
    return config.text_prior[min(key_index, len(config.text_prior) - 1)]


class WindowController:
    """Acceptance statistics per (source, slot) and the choice of drafts per pass.

    Args:
        costs: seconds of a pass by width (measured widths; others are interpolated).
        drafts: most drafts per pass.
        config: priors, forgetting and slack.
        keys: pool key lengths. Source ``POOL + i`` is a text-pool draft when ``i mod 2 keys < keys``,
            else a trajectory-pool draft (the numbering of :meth:`RowPools.candidates`); it picks the prior.
        ranks: candidate ranks tracked apart (:mod:`jacobix.tokens.candidates` keeps the best candidate
            and the others apart), each with its own ``2 keys`` pool sources.
    """

    def __init__(self, costs: dict[int, float], drafts: int, config: AdaptiveConfig, keys: int = 1,
                 ranks: int = 1) -> None:
        self.config, self.drafts = config, drafts
        self.cost = [interpolate(costs, k + 1) for k in range(drafts + 1)]
        self.source_count = POOL + 2 * keys * ranks
        pools = [_pool_prior(config, (s - POOL) % (2 * keys), keys) for s in range(POOL, self.source_count)]
        rates = [config.jacobi_prior, *pools]
        rates = torch.tensor(rates, dtype=torch.float64)
        self.prior = rates[:, None].expand(self.source_count, max(drafts, 1))  # (S, D)
        self.passed = torch.zeros_like(self.prior)  # (S, D) decayed observations
        self.tested = torch.zeros_like(self.prior)

    def choose(self, sources: Tensor) -> int:
        """Drafts to feed, given each active row's draft sources (R, D); 0 means one token per pass."""
        if self.drafts == 0 or sources.shape[0] == 0:
            return 0
        weight = self.config.prior_weight
        rate = (self.passed + weight * self.prior) / (self.tested + weight)  # (S, D)
        slot_rate = rate[sources, torch.arange(self.drafts)[None]]  # (R, D)
        expected = 1 + torch.cat([torch.zeros(sources.shape[0], 1), slot_rate.cumprod(1).cumsum(1)], 1)  # (R, D+1)
        speed = expected.sum(0) / torch.tensor(self.cost)  # (D+1,)
        floor = max(float(speed.max()) * (1 - self.config.slack), float(speed[0]))  # never expected slower than k = 0
        return int((speed >= floor).nonzero().max())

    def observe(self, sources: Tensor, n_accepted: Tensor, fed: int) -> None:
        """Count slot ``i`` as tested when it was fed and every slot before it passed."""
        slots = torch.arange(self.drafts)[None]  # (1, D)
        tested = (slots < fed) & (slots <= n_accepted[:, None])  # (R, D)
        passed = tested & (slots < n_accepted[:, None])
        self.passed *= self.config.decay
        self.tested *= self.config.decay
        for source in range(self.source_count):
            on = sources == source
            self.passed[source] += (passed & on).sum(0).double()
            self.tested[source] += (tested & on).sum(0).double()


@dataclass
class ScheduleStats:
    """What the scheduler chose: passes per window width, measured costs, pool use."""

    widths: dict[int, int] = field(default_factory=dict)
    cost_ratio: dict[int, float] = field(default_factory=dict)
    pool_drafts: int = 0
    pool_accepted: int = 0
    rows: dict[int, int] = field(default_factory=dict)  # passes by candidates verified per row (multi-candidate)

    def summary(self) -> str:
        widths = ", ".join(f"w{w}: {n}" for w, n in sorted(self.widths.items()))
        costs = ", ".join(f"w{w}: {c:.2f}x" for w, c in sorted(self.cost_ratio.items()))
        rows = "; passes by candidates [" + ", ".join(f"r{r}: {n}" for r, n in sorted(self.rows.items())) + "]"
        return (f"passes by width [{widths}]; cost vs w1 [{costs}]; pool drafts {self.pool_drafts}, "
                f"accepted {self.pool_accepted}" + (rows if self.rows else ""))


class ScheduledProblem:
    """A token problem with pool drafts and a per-pass number of drafts (a :class:`JacobiProblem`).

    Args:
        inner: the :class:`~jacobix.tokens.problem.TokenProblem` (its sweep accepts any number of drafts).
        drafts: drafts per window (window - 1).
        controller: chooses drafts per pass; None feeds all of them.
        lookahead: n-gram pool settings; None keeps the inner problem's drafts.
    """

    def __init__(self, inner, drafts: int, controller: WindowController | None, lookahead: LookaheadConfig | None) -> None:
        self.inner, self.drafts, self.controller = inner, drafts, controller
        self.lookahead = lookahead
        self.pools = None if lookahead is None else RowPools(lookahead, drafts)
        self.sources: Tensor | None = None
        self.stats = ScheduleStats()
        if controller is not None:
            self.stats.cost_ratio = {k + 1: c / controller.cost[0] for k, c in enumerate(controller.cost)}

    def draft(self, state: FixedPointState, carried: Drafts | None, fresh: Tensor) -> Drafts:
        drafts = self.inner.draft(state, carried, fresh)
        b, d = drafts.values.shape
        self.sources = torch.zeros(b, d, dtype=torch.long)
        if self.lookahead is None or d == 0:
            return drafts
        self.pools.catch_up(state.values, state.length)
        values, p_draft = drafts.values.clone(), drafts.p_draft
        first = values[:, 0].tolist()
        for row in range(b):
            key_index, candidates = self.pools.candidates(row)
            if not candidates:
                continue
            chosen = torch.tensor(pick(candidates, first[row] if carried is not None else None)[:d])
            values[row, : len(chosen)] = chosen.to(values.device)
            self.sources[row, : len(chosen)] = POOL + key_index
        if p_draft is not None:
            one_hot = torch.nn.functional.one_hot(values, p_draft.shape[-1]).to(p_draft.dtype)  # (B, D, V)
            p_draft = torch.where((self.sources >= POOL).to(values.device)[..., None], one_hot, p_draft)
        return Drafts(values, p_draft)

    def sweep(self, state: FixedPointState, drafts: Drafts) -> Acceptance:
        running = ~state.done.cpu()
        fed = self.drafts if self.controller is None else self.controller.choose(self.sources[running])
        sub = Drafts(drafts.values[:, :fed], None if drafts.p_draft is None else drafts.p_draft[:, :fed])
        decision = self.inner.sweep(state, sub)
        n_accepted = decision.n_accepted.cpu()
        if self.controller is not None:
            self.controller.observe(self.sources[running], n_accepted[running], fed)
        self._count(fed, n_accepted, running)
        if self.lookahead is not None and self.lookahead.harvest_trajectory and self.inner.sampling.greedy and fed > 0:
            self._harvest(decision.proposals.values, running)
        rest = Drafts(drafts.values[:, fed:], None if drafts.p_draft is None else drafts.p_draft[:, fed:])
        return Acceptance(
            n_commit=decision.n_commit,
            values=torch.cat([decision.values, rest.values], 1),  # (B, D+1)
            proposals=_concat(decision.proposals, rest),
            n_accepted=decision.n_accepted,
            finished=decision.finished,
        )

    def _count(self, fed: int, n_accepted: Tensor, running: Tensor) -> None:
        self.stats.widths[fed + 1] = self.stats.widths.get(fed + 1, 0) + 1
        pool = (self.sources[:, :fed] >= POOL) & running[:, None]  # (B, fed)
        self.stats.pool_drafts += int(pool.sum())
        self.stats.pool_accepted += int((pool & (torch.arange(fed)[None] < n_accepted[:, None])).sum())

    def _harvest(self, proposals: Tensor, running: Tensor) -> None:
        for row, tokens in enumerate(proposals.tolist()):
            if running[row]:
                self.pools.add(row, tokens)

    def rollback(self, state: FixedPointState) -> None:
        self.inner.rollback(state)


def _concat(first: Drafts, second: Drafts) -> Drafts:
    values = torch.cat([first.values, second.values], 1)
    if first.p_draft is None or second.p_draft is None:
        return Drafts(values)
    return Drafts(values, torch.cat([first.p_draft.to(second.p_draft.dtype), second.p_draft], 1))


def schedule(inner, model, *, drafts: int, adaptive: bool, lookahead: LookaheadConfig | None,
             config: AdaptiveConfig, device: torch.device, dtype: torch.dtype) -> ScheduledProblem:
    """Wrap ``inner`` with pool drafts and/or the adaptive choice of drafts per pass."""
    controller = None
    if adaptive:
        keys = 1 if lookahead is None else len(lookahead.key_lengths)
        controller = WindowController(cached_costs(model, config, device, dtype), drafts, config, keys)
    return ScheduledProblem(inner, drafts, controller, lookahead)


__all__ = ["AdaptiveConfig", "ScheduleStats", "ScheduledProblem", "WindowController", "interpolate", "measure_costs", "schedule"]
