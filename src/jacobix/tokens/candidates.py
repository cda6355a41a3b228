"""Several n-gram pool candidates verified per pass, greedy or sampling (a :class:`JacobiProblem`).

Each engine row keeps up to ``K = LookaheadConfig.verify`` candidate draft sequences: the pool's
continuations of its committed text (those agreeing with the model's carried guess first), then
the Jacobi carry-over. A pass evaluates the first ``r`` candidates of every row as ``r`` rows of
the model batch (on a cache of ``B * r`` rows kept for that ``r``) and commits the longest exact
match (:func:`jacobix.tokens.multidraft.greedy_winner`), or, when sampling, runs the lossless
multi-candidate rule :func:`jacobix.core.acceptance.candidates_accept` (every candidate is a fixed
draft: the Jacobi carry-over too, which stays lossless and only accepts less often than SJD's
``min(1, p/q)``). The winner's new slots are then copied into every other row of every cache, so
all caches hold each row's committed prefix. With a :class:`~jacobix.tokens.multidraft.GridController`,
``r`` and the drafts fed are chosen per pass from past passes only, so greedy output stays
exactly greedy AR and sampled output keeps the AR distribution.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jacobix.core.acceptance import candidates_accept, leading_true
from jacobix.tokens.policy.adaptive import AdaptiveConfig, ScheduleStats
from jacobix.core.engine import Acceptance, Drafts, FixedPointState
from jacobix.tokens.proposers.ngram import LookaheadConfig, RowPools, order
from jacobix.tokens.multidraft import GridController, cached_grid, copy_slots, greedy_winner, row_options
from jacobix.core.sampling import process_logits, sample, target_probs

JACOBI, POOL = 0, 1  # source ids: Jacobi carry-over; POOL + i: best candidate of pool key i; POOL + n_pool_keys + i: others


class CandidateProblem:
    """Pool candidates verified as sibling rows of the batch.

    Args:
        inner: the unguided :class:`~jacobix.tokens.problem.TokenProblem` (its cache is the 1-candidate cache).
        drafts: drafts per window (window - 1).
        lookahead: pool settings; ``lookahead.verify`` is the most candidates per row.
        rows: candidate counts with a cache each, e.g. (1, 2, 4); the largest is used without a controller.
        controller: chooses (candidates, drafts) per pass; None feeds every candidate all drafts.
    """

    def __init__(self, inner, drafts: int, lookahead: LookaheadConfig, rows: tuple[int, ...],
                 controller: GridController | None) -> None:
        if inner.guidance is not None:
            raise ValueError("multi-candidate verification runs without classifier-free guidance; use verify=1")
        self.inner, self.drafts, self.lookahead, self.rows, self.controller = inner, drafts, lookahead, rows, controller
        self.most = max(rows)
        self.caches: dict[int, object] = {1: inner.cache}
        self.pools = None if lookahead is None else RowPools(lookahead, drafts)
        self.candidates = self.sources = self.novel = None  # (B, K, D) each
        self.last: tuple[int, Tensor, Tensor] | None = None  # (rows, winner (B,), first slot written (B,))
        self.stats = ScheduleStats()
        if controller is not None:
            base = float(controller.grid[0, 0])
            self.stats.cost_ratio = {k + 1: float(c) / base for k, c in enumerate(controller.grid[-1])}

    def draft(self, state: FixedPointState, carried: Drafts | None, fresh: Tensor) -> Drafts:
        drafts = self.inner.draft(state, carried, fresh)  # (B, D) Jacobi carry-over and fresh slots
        b, d = drafts.values.shape
        self.candidates = drafts.values[:, None].repeat(1, self.most, 1).cpu()  # (B, K, D)
        self.sources = torch.zeros(b, self.most, d, dtype=torch.long)
        if d > 0:
            self.pools.catch_up(state.values, state.length)
            first = drafts.values[:, 0].tolist()
            for row in range(b):
                self._fill(row, first[row] if carried is not None else None, d)
        same = self.candidates[:, :, None] == self.candidates[:, None]  # (B, K, K, D)
        shared = same.long().cumprod(-1).bool() & torch.ones(self.most, self.most).tril(-1).bool()[None, :, :, None]
        self.novel = ~shared.any(2)  # (B, K, D) first candidate with this (t+1)-prefix
        return Drafts(self.candidates[:, 0].to(drafts.values.device))

    def _fill(self, row: int, carried_first: int | None, d: int) -> None:
        """Row ``row``'s pool candidates first (best first), then its Jacobi carry-over."""
        key_index, found = self.pools.candidates(row)
        jacobi = self.candidates[row, 0].clone()
        chosen = order(found, carried_first)[: self.most - 1]
        n_keys = 2 * len(self.lookahead.key_lengths)  # text-pool and trajectory-pool keys (RowPools.candidates)
        for rank, candidate in enumerate(chosen):
            tokens = torch.tensor(candidate[:d])
            self.candidates[row, rank, : len(tokens)] = tokens
            self.sources[row, rank, : len(tokens)] = POOL + key_index + (n_keys if rank else 0)
        self.candidates[row, len(chosen) :] = jacobi
        self.sources[row, len(chosen) :] = JACOBI

    def sweep(self, state: FixedPointState, drafts: Drafts) -> Acceptance:
        running = ~state.done.cpu()
        b, d = self.candidates.shape[0], self.candidates.shape[2]
        r, fed = (self.most, d) if self.controller is None else self.controller.choose_grid(
            self.sources[running], self.novel[running])
        budget = int((state.limit - state.length)[running.to(state.length.device)].max()) if bool(running.any()) else 1
        fed = min(fed, max(budget - 1, 0))  # drafts past every row's limit are never committed
        r = r if fed > 0 else 1
        device = state.values.device
        fed_drafts = self.candidates[:, :r, :fed].to(device)  # (B, r, fed)
        tokens = torch.cat([state.last_values()[:, None, None].expand(b, r, 1), fed_drafts], 2).reshape(b * r, fed + 1)
        positions = (state.window_positions(fed + 1) - 1).repeat_interleave(r, 0)  # (B*r, fed+1)
        last = getattr(self.inner, "max_position", None)
        slots = positions if last is None else positions.clamp(max=last)  # outputs past the limit are never committed
        logits = self.inner.model.forward(tokens, slots, self.caches[r])  # (B*r, fed+1, V)
        new_positions = positions + 1 - self.inner.prompt_length.repeat_interleave(r)[:, None]
        logits = process_logits(logits, new_positions, self.inner.sampling, self.inner.processors)
        rows = torch.arange(b, device=device)
        if self.inner.sampling.greedy:
            targets = logits.argmax(-1).view(b, r, fed + 1)  # (B, r, fed+1)
            winner, matched = greedy_winner(fed_drafts, targets)
            n_accepted = matched[rows, winner]
            values = proposals = targets[rows, winner]  # (B, fed+1)
            if self.lookahead.harvest_trajectory and fed > 0:
                self._harvest(targets, running)
        else:
            winner, n_accepted, values, proposals, matched = self._sample(fed_drafts, logits.view(b, r, fed + 1, -1))
        n_commit, finished = self.inner._stop_at_eos(values, n_accepted + 1)
        rest = self.candidates[rows.cpu(), winner.cpu(), fed:].to(device)  # (B, D - fed) drafts not fed
        self.last = (r, winner, state.length - 1)
        self._account(r, fed, winner.cpu(), matched.cpu(), running)
        return Acceptance(n_commit=n_commit, values=torch.cat([values, rest], 1),
                          proposals=Drafts(torch.cat([proposals, rest], 1)), n_accepted=n_accepted, finished=finished)

    def _sample(self, fed_drafts: Tensor, logits: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Lossless multi-candidate sampling: winner, accepted drafts, committed values (B, fed+1),
        next guesses sampled from the winner's targets, and each candidate's matches (B, r)."""
        b, r, fed = fed_drafts.shape
        probs = target_probs(logits).to(self.inner.prob_dtype)  # (B, r, fed+1, V)
        winner, n_accepted, next_token = candidates_accept(fed_drafts, probs, self.inner.generator)
        rows = torch.arange(b, device=probs.device)
        values = torch.cat([fed_drafts[rows, winner], next_token[:, None]], 1)  # (B, fed+1)
        values.scatter_(1, n_accepted[:, None], next_token[:, None])
        matched = torch.minimum(leading_true(fed_drafts == values[:, None, :fed]), n_accepted[:, None] + 1)
        return winner, n_accepted, values, sample(probs[rows, winner], self.inner.generator), matched

    def _harvest(self, targets: Tensor, running: Tensor) -> None:
        for row, outputs in enumerate(targets.tolist()):
            if running[row]:
                for tokens_out in outputs:
                    self.pools.add(row, tokens_out)

    def _account(self, r: int, fed: int, winner: Tensor, matched: Tensor, running: Tensor) -> None:
        """Controller observations (every candidate row's own matches) and schedule statistics."""
        if self.controller is not None:
            self.controller.observe(self.sources[running, :r].flatten(0, 1), matched[running].flatten(), fed)
        self.stats.widths[fed + 1] = self.stats.widths.get(fed + 1, 0) + 1
        self.stats.rows[r] = self.stats.rows.get(r, 0) + 1
        pool = (self.sources[:, :r, :fed] >= POOL) & running[:, None, None]  # (B, r, fed)
        self.stats.pool_drafts += int(pool.sum())
        won = torch.arange(len(winner))
        hit = pool[won, winner] & (torch.arange(fed)[None] < matched[won, winner][:, None])  # (B, fed)
        self.stats.pool_accepted += int(hit.sum())

    def rollback(self, state: FixedPointState) -> None:
        """Record lengths and copy the newly committed slots of the last pass's winner into every cache row."""
        kept = state.length - 1  # (B,) the last committed token is fed again by the next sweep
        if len(self.caches) < len(self.rows):
            self._open_caches(state)
        if self.last is not None:
            used, winner, start = self.last
            count = (kept - start).clamp_min(1)  # (B,)
            span = torch.arange(int(count.max()), device=kept.device)
            positions = start[:, None] + torch.minimum(span[None], count[:, None] - 1)  # (B, P)
            source_rows = torch.arange(len(kept), device=kept.device) * used + winner.to(kept.device)
            for r, cache in self.caches.items():
                copy_slots(cache, self.caches[used], source_rows.repeat_interleave(r), positions.repeat_interleave(r, 0))
        for r, cache in self.caches.items():
            cache.rollback(kept.repeat_interleave(r))

    def _open_caches(self, state: FixedPointState) -> None:
        """Caches of ``B * r`` rows holding the prefilled prompt of the 1-candidate cache."""
        primary = self.inner.cache
        b = len(state.length)
        prompt = torch.arange(int(state.length.max()) - 1, device=state.length.device).expand(b, -1)  # (B, L-1)
        prompt = torch.minimum(prompt, (state.length[:, None] - 2).clamp_min(0))
        for r in self.rows:
            if r not in self.caches:
                self.caches[r] = self.inner.model.new_cache(b * r, primary.capacity)
                rows = torch.arange(b, device=prompt.device).repeat_interleave(r)
                copy_slots(self.caches[r], primary, rows, prompt.repeat_interleave(r, 0))


def verify_candidates(inner, model, *, drafts: int, adaptive: bool, lookahead: LookaheadConfig,
                      device: torch.device, dtype: torch.dtype) -> CandidateProblem:
    """Wrap unguided ``inner`` so that up to ``lookahead.verify`` pool candidates are verified per pass."""
    rows = row_options(lookahead.verify)
    controller = None
    if adaptive:
        config = AdaptiveConfig(max_window=drafts + 1)
        controller = GridController(cached_grid(model, rows, config, device, dtype), drafts, rows, config,
                                    len(lookahead.key_lengths))
    return CandidateProblem(inner, drafts, lookahead, rows, controller)


__all__ = ["CandidateProblem", "verify_candidates"]
