"""Lookahead decoding's n-gram pool as a draft source (docs/text.md, "Drafts from an n-gram pool"), model-free.

The pool maps the last ``k`` tokens of a text (a key, ``k`` in ``key_lengths``) to continuations
seen after that key: in the prompt and the committed output (the text pool) and in the Jacobi
trajectory, each sweep's outputs (the trajectory pool, asked only when the text pool has no
match). Before a sweep, the window's drafts are replaced by the best continuation of the row's
committed text, when there is one. A continuation is a deterministic function of the
past, so as a draft its distribution is one-hot: SJD stays lossless, greedy Jacobi stays exact.

Worked example, key length 2::

    text     a b c d a b           pool (a, b) -> [(c, d, a, b)], (b, c) -> [(d, a, b)], ...
    lookup   context ends in "a b" -> drafts c d a b
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from jacobix.core.engine import Drafts
from jacobix.tokens.proposers.base import Candidates, DraftSource, ProposalContext, Proposer


@dataclass(frozen=True, kw_only=True)
class LookaheadConfig:
    """How the n-gram pool harvests and proposes.

    Attributes:
        key_lengths: key sizes to try, longest first (a longer matching key is a better predictor).
        max_candidates: continuations kept per key (lookahead's G); the most recent wins ties.
        harvest_trajectory: also harvest the model's outputs of every sweep, not only committed text
            (greedy only: with sampling, uncommitted samples in the pool would make the choice of
            which carried drafts stay in the window depend on their values, and SJD would lose
            its exactness; the HF SJD test catches that).
        verify: candidate sequences verified per pass as sibling rows of the batch (greedy or
            lossless sampling, without guidance); 1 replaces the Jacobi drafts by the best one.
        text_prior: pass rate per slot assumed for text-pool drafts before any observation, by key
            (longest first; later keys use the last entry). On SmolLM2 a first text-pool draft
            passed 78% / 25% / 23% of the time for keys of 3 / 2 / 1 tokens.
        trajectory_prior: the same for trajectory-pool drafts (5-15% on SmolLM2).
    """

    key_lengths: tuple[int, ...] = (3, 2, 1)
    max_candidates: int = 8
    harvest_trajectory: bool = True
    verify: int = 1
    text_prior: tuple[float, ...] = (0.7, 0.5, 0.3)
    trajectory_prior: float = 0.1

    def __post_init__(self) -> None:
        if not self.key_lengths or min(self.key_lengths) < 1:
            raise ValueError(f"LookaheadConfig.key_lengths must be non-empty positive ints, got {self.key_lengths}")
        if tuple(sorted(self.key_lengths, reverse=True)) != self.key_lengths:
            raise ValueError(f"LookaheadConfig.key_lengths must be sorted longest first, got {self.key_lengths}")
        if self.max_candidates < 1:
            raise ValueError(f"LookaheadConfig.max_candidates must be >= 1, got {self.max_candidates}")
        if self.verify < 1:
            raise ValueError(f"LookaheadConfig.verify must be >= 1 (candidates verified per pass), got {self.verify}")
        if not self.text_prior or not all(0.0 <= p < 1.0 for p in (*self.text_prior, self.trajectory_prior)):
            raise ValueError("LookaheadConfig: text_prior (at least one) and trajectory_prior must be rates in [0, 1)")

    def sources(self) -> tuple[DraftSource, ...]:
        """Text-pool sources by key, then trajectory-pool sources by key (the ids of :meth:`RowPools.candidates`)."""
        text = [DraftSource(f"text-{k}", self.text_prior[min(i, len(self.text_prior) - 1)])
                for i, k in enumerate(self.key_lengths)]
        return (*text, *(DraftSource(f"trajectory-{k}", self.trajectory_prior) for k in self.key_lengths))


class NGramPool:
    """Continuations (up to ``length`` tokens) keyed by the tokens before them, for one text.

    Args:
        config: key lengths and candidates per key.
        length: longest continuation kept (the number of drafts of a window).
    """

    def __init__(self, config: LookaheadConfig, length: int) -> None:
        if length < 1:
            raise ValueError(f"NGramPool length must be >= 1, got {length}")
        self.config, self.length = config, length
        self.table: dict[tuple[int, ...], list[tuple[int, ...]]] = {}

    def add(self, tokens: list[int], start: int = 0) -> None:
        """Harvest every key ending at index ``>= start`` of ``tokens`` with the text after it."""
        for k in self.config.key_lengths:
            for i in range(max(start - k + 1, 0), len(tokens) - k):
                self._store(tuple(tokens[i : i + k]), tuple(tokens[i + k : i + k + self.length]))

    def _store(self, key: tuple[int, ...], continuation: tuple[int, ...]) -> None:
        """Keep the longer of two continuations that extend one another; the newest goes last."""
        entries = self.table.setdefault(key, [])
        for j, old in enumerate(entries):
            shorter, longer = sorted((old, continuation), key=len)
            if longer[: len(shorter)] == shorter:
                del entries[j]
                continuation = longer
                break
        entries.append(continuation)
        if len(entries) > self.config.max_candidates:
            del entries[0]

    def candidates(self, context: list[int]) -> tuple[int, list[tuple[int, ...]]]:
        """Continuations of the longest key that ``context`` ends with, most recent first, and that
        key's index in ``key_lengths`` (the controller keeps acceptance statistics per key length)."""
        for index, k in enumerate(self.config.key_lengths):
            if len(context) >= k:
                found = self.table.get(tuple(context[-k:]))
                if found:
                    return index, found[::-1]
        return -1, []


def pick(candidates: list[tuple[int, ...]], carried_first: int | None) -> tuple[int, ...]:
    """Choose one candidate: the most recent one that agrees with the model's carried guess, else the newest.

    The carried guess for the next slot is the model's own prediction there from the last sweep;
    a continuation that starts with it is more likely to pass verification.
    """
    for candidate in candidates:
        if carried_first is not None and candidate[0] == carried_first:
            return candidate
    return candidates[0]


def order(candidates: list[tuple[int, ...]], carried_first: int | None) -> list[tuple[int, ...]]:
    """All candidates, best first: those agreeing with the carried guess (most recent first), then the rest."""
    agree = [c for c in candidates if carried_first is not None and c[0] == carried_first]
    return agree + [c for c in candidates if not (carried_first is not None and c[0] == carried_first)]


class RowPools:
    """Per batch row, a pool of the row's text (prompt and committed tokens, fed as they come) and
    a pool of its Jacobi trajectory (the model's guesses); the text pool is asked first.

    A guess was computed from drafts that were partly wrong, so its n-grams are weaker evidence
    than text the model committed: on SmolLM2 with a 10-draft window, one pool in which the newest
    guesses outranked the text took 134 passes over the four bench prompts, this order 111.
    """

    def __init__(self, config: LookaheadConfig, length: int) -> None:
        self.config, self.length = config, length
        self.pools: list[NGramPool] = []
        self.guesses: list[NGramPool] = []
        self.history: list[list[int]] = []

    def catch_up(self, values: Tensor, lengths: Tensor) -> None:
        """Harvest the tokens committed since the last call (one host copy).

        Args:
            values: (B, C) committed tokens of every row.
            lengths: (B,) committed length of every row.
        """
        lengths = lengths.tolist()
        if not self.pools:
            self.pools = [NGramPool(self.config, self.length) for _ in lengths]
            self.guesses = [NGramPool(self.config, self.length) for _ in lengths]
            self.history = [[] for _ in lengths]
        low = min(len(h) for h in self.history)
        rows = values[:, low : max(lengths)].tolist()
        reach = self.length + max(self.config.key_lengths)  # keys whose continuation reaches the new tokens
        for row, (history, length) in enumerate(zip(self.history, lengths)):
            start = len(history)
            history.extend(rows[row][start - low : length - low])
            self.pools[row].add(history[max(start - reach, 0) :])

    def candidates(self, row: int) -> tuple[int, list[tuple[int, ...]]]:
        """Continuations of ``row``'s committed text: from its text pool if any key matches, else
        from its trajectory pool. The index is ``key index`` for the text pool and
        ``len(key_lengths) + key index`` for the trajectory (see :meth:`NGramPool.candidates`)."""
        index, found = self.pools[row].candidates(self.history[row])
        if found:
            return index, found
        index, found = self.guesses[row].candidates(self.history[row])
        return (index + len(self.config.key_lengths), found) if found else (-1, [])

    def add(self, row: int, tokens: list[int]) -> None:
        """Harvest a sweep's outputs (the model's guesses) of ``row``."""
        self.guesses[row].add(tokens)


class NGramProposer(Proposer):
    """Lookahead's n-gram pool over another proposer: each row's best pool continuations replace
    (``verify=1``) or join (``verify=K``: up to K-1 of them, then the inner proposal) the inner
    proposer's drafts. Pool drafts are fixed (one-hot), so SJD stays lossless.

    Source ids: the inner proposer's first, then :meth:`LookaheadConfig.sources`, then (with
    ``verify > 1``) the same again for candidates after the best one, whose pass rates are lower.

    Args:
        inner: where drafts come from when the pool has none (e.g. Jacobi iteration).
        config: pool settings.
        drafts: drafts per window (the longest continuation kept).
    """

    def __init__(self, inner: Proposer, config: LookaheadConfig, drafts: int) -> None:
        self.inner, self.config, self.drafts = inner, config, drafts
        pool = config.sources()
        alternates = tuple(DraftSource(f"{s.name} alt", s.prior) for s in pool) if config.verify > 1 else ()
        self.pool_ids = len(inner.sources)  # first pool source id
        self.alternate_ids = self.pool_ids + len(pool)  # first id of candidates after the best
        self.sources = (*inner.sources, *pool, *alternates)
        self.candidates = config.verify
        self.pools = RowPools(config, max(drafts, 1))

    def begin(self, batch_size: int) -> None:
        self.inner.begin(batch_size)
        self.pools = RowPools(self.config, max(self.drafts, 1))

    def propose(self, context: ProposalContext) -> Candidates:
        base = self.inner.propose(context)  # (B, 1, D)
        b, _, d = base.tokens.shape
        r = self.config.verify
        tokens = base.tokens[:, :1].repeat(1, r, 1).cpu()  # (B, R, D)
        source = base.source[:, :1].repeat(1, r, 1).cpu()
        from_pool = torch.zeros(b, r, d, dtype=torch.bool)
        if d > 0:
            self.pools.catch_up(context.canvas, context.length)
            first = tokens[:, 0, 0].tolist() if context.carried is not None else [None] * b
            for row in range(b):
                self._fill(row, first[row], tokens, source, from_pool)
        device = base.tokens.device
        tokens, from_pool = tokens.to(device), from_pool.to(device)
        p_draft = base.p_draft
        if p_draft is not None:
            one_hot = torch.nn.functional.one_hot(tokens, p_draft.shape[-1]).to(p_draft.dtype)  # (B, R, D, V)
            p_draft = torch.where(from_pool[..., None], one_hot, p_draft[:, :1].expand(-1, r, -1, -1))
        return Candidates(tokens, p_draft, source, state=base.state)

    def _fill(self, row: int, carried_first: int | None, tokens: Tensor, source: Tensor, from_pool: Tensor) -> None:
        """Row ``row``'s pool candidates, best first; with ``verify > 1`` the inner proposal stays last."""
        key_index, found = self.pools.candidates(row)
        if not found:
            return
        r, d = tokens.shape[1:]
        chosen = order(found, carried_first)[: max(r - 1, 1)]
        inner = tokens[row, 0].clone()
        for rank, candidate in enumerate(chosen):
            drafts = torch.tensor(candidate[:d])
            tokens[row, rank, : len(drafts)] = drafts
            source[row, rank, : len(drafts)] = (self.alternate_ids if rank else self.pool_ids) + key_index
            from_pool[row, rank, : len(drafts)] = True
        tokens[row, len(chosen):] = inner

    def redraft(self, p_target: Tensor, positions: Tensor, generator: torch.Generator | None,
                previous: Drafts | None = None) -> Tensor:
        return self.inner.redraft(p_target, positions, generator, previous)

    def observe(self, outputs: Tensor, running: Tensor) -> None:
        """Harvest a greedy sweep's outputs into the trajectory pools (sampled outputs never: see
        :attr:`LookaheadConfig.harvest_trajectory`)."""
        self.inner.observe(outputs, running)
        if not self.config.harvest_trajectory or outputs.shape[-1] < 2:
            return
        for row, per_candidate in enumerate(outputs.tolist()):
            if running[row]:
                for tokens in per_candidate:
                    self.pools.add(row, tokens)


__all__ = ["LookaheadConfig", "NGramPool", "NGramProposer", "RowPools", "order", "pick"]

