"""The model-free engine: Jacobi iteration on a lower-triangular fixed point.

A sequential generator defines ``x_t = F_t(x_<t)`` (noise, if any, lives inside ``F``). Each
row of a batch has a committed prefix ``x_0 .. x_{n-1}`` and a window of ``D = window - 1``
guesses for ``x_n .. x_{n+D-1}``. One *sweep* evaluates ``F`` on ``[x_{n-1}] + guesses`` in
one causal pass, producing ``D + 1`` outputs for ``x_n .. x_{n+D}``; an acceptance rule says how
many of them to commit; the window slides past them; leftover outputs become the next guesses
and the init rule fills the fresh slots at the end.

Worked example, window 4 (D = 3), row with n = 10 committed values::

    inputs   x9   g10  g11  g12        positions 9 .. 12
    outputs  y10  y11  y12  y13        (y10 is exact: it only sees committed values)
    rule     g10 == y10, g11 != y11  -> 1 accepted draft, commit y10, y11 (n becomes 12)
    next     guesses y12, y13 carried, one fresh slot for x14 from the init rule

Methods differ only in the ``JacobiProblem`` they hand to :func:`solve`: greedy Jacobi, SJD,
sequential decoding (window 1) and GS-Jacobi for flows (a segment rule that commits a whole
segment at once) all run this one loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from jacobix.core.acceptance import take_positions


@dataclass
class FixedPointState:
    """Committed values of every row, and where each row stands.

    Attributes:
        values: (B, C, *F) committed values; row b's first ``length[b]`` are valid.
        length: (B,) number of committed values.
        limit: (B,) a row is done once ``length >= limit``.
        done: (B,) rows that need no more sweeps (limit reached or a stop value committed).
        sweeps_on_window: (B,) sweeps since the row last committed anything (segment rules), or,
            in block mode, sweeps on the current block.
        block_end: (B,) in block mode, the position where the row's current block ends.
    """

    values: Tensor
    length: Tensor
    limit: Tensor
    done: Tensor
    sweeps_on_window: Tensor
    block_end: Tensor | None = None

    @classmethod
    def start(cls, prefix: Tensor, prefix_length: Tensor, limit: Tensor, window: int) -> FixedPointState:
        """State with ``prefix`` (B, L, *F) committed, room for ``limit`` values plus a window."""
        b, length = prefix.shape[:2]
        capacity = max(length, int(limit.max())) + window + 1
        values = prefix.new_zeros((b, capacity, *prefix.shape[2:]))
        values[:, :length] = prefix
        limit = limit.to(prefix_length)
        return cls(
            values=values,
            length=prefix_length.clone(),
            limit=limit,
            done=prefix_length >= limit,
            sweeps_on_window=torch.zeros_like(prefix_length),
        )

    def last_values(self) -> Tensor:
        """(B, *F) the last committed value of each row (requires length >= 1)."""
        index = (self.length - 1).clamp_min(0)
        return self.values[torch.arange(len(index), device=index.device), index]

    def window_positions(self, slots: int) -> Tensor:
        """(B, slots) absolute positions ``length .. length + slots - 1`` (the draft slots of a window)."""
        return self.length[:, None] + torch.arange(slots, device=self.length.device)


@dataclass
class Drafts:
    """Guesses for a window, and what travels with each guess when the window slides.

    Attributes:
        values: (B, D, *F) the guesses.
        p_draft: (B, D, V) for sampled tokens, the distribution each was drawn from; None means
            every draft is fixed (one-hot).
        state: (B, D, *S) a proposer's continuous per-slot state (e.g. a noisy embedding and its
            noise level), carried with its slot from sweep to sweep; None if unused.
    """

    values: Tensor
    p_draft: Tensor | None = None
    state: Tensor | None = None

    def shift(self, n_commit: Tensor, slots: int) -> tuple[Drafts, Tensor]:
        """Slide past ``n_commit`` (B,) committed slots, keeping ``slots`` draft slots.

        Returns the carried drafts (fresh slots hold placeholders) and ``fresh`` (B, slots), True
        where a slot has no carried draft and must be filled by the draft rule.
        """
        total = self.values.shape[1]
        index = n_commit[:, None] + torch.arange(slots, device=n_commit.device)  # (B, slots)
        fresh = index >= total
        index = index.clamp(max=max(total - 1, 0))
        carried = Drafts(*(None if x is None else take_positions(x, index) for x in (self.values, self.p_draft, self.state)))
        return carried, fresh


@dataclass
class Acceptance:
    """What a sweep decided, per row.

    Attributes:
        n_commit: (B,) values to commit, from the front of ``values``.
        values: (B, D+1, *F) values for positions n .. n+D.
        proposals: next guesses for positions n .. n+D (the engine slides them).
        n_accepted: (B,) drafts that passed the rule (statistics only).
        finished: (B,) rows whose committed part ends in a stop value, or None.
    """

    n_commit: Tensor
    values: Tensor
    proposals: Drafts
    n_accepted: Tensor
    finished: Tensor | None = None


class JacobiProblem(Protocol):
    """A method on the engine: its step function, acceptance rule and draft rule."""

    def sweep(self, state: FixedPointState, drafts: Drafts) -> Acceptance:
        """One causal pass over ``[last committed] + drafts``, then the acceptance rule."""
        ...

    def draft(self, state: FixedPointState, carried: Drafts | None, fresh: Tensor) -> Drafts:
        """Fill the fresh slots (a suffix of each row's window; all slots when ``carried`` is None)."""
        ...

    def rollback(self, state: FixedPointState) -> None:
        """Forget cached work past each row's committed prefix."""
        ...


@dataclass
class SweepRecord:
    """One sweep of one solve, for pictures and consistency distillation (tensors on CPU)."""

    start: Tensor  # (B,) committed length before the sweep
    drafts: Tensor  # (B, D, *F) guesses fed to the model
    values: Tensor  # (B, D+1, *F) outputs of the sweep
    n_accepted: Tensor  # (B,)
    n_commit: Tensor  # (B,) after the budget clamp


SettledRule = Callable[[Tensor, Tensor], Tensor]
"""``rule(old, new) -> (B, D) bool``: which drafts a LOSSY relaxed convergence test counts as settled."""


@dataclass
class SolveStats:
    """Exact counts of one :func:`solve` call.

    Attributes:
        forward_passes: sweeps made.
        committed: (P, B) values committed by each pass.
        accepted: (P, B) drafts accepted by each pass.
        active: (P, B) rows that were still running during each pass.
        lossy: (P, B) values committed by a lossy early exit without having converged (zero
            unless ``lossy_sweep_cap`` or ``lossy_settled`` is set).
        window: values evaluated per sweep (drafts + 1).
        trajectory: one record per sweep when ``record=True``.
    """

    forward_passes: int
    committed: Tensor
    accepted: Tensor
    active: Tensor
    lossy: Tensor
    window: int
    trajectory: list[SweepRecord] = field(default_factory=list)


def solve(
    problem: JacobiProblem,
    state: FixedPointState,
    *,
    window: int,
    record: bool = False,
    on_sweep: Callable[[], None] | None = None,
    block: bool = False,
    lossy_sweep_cap: int | None = None,
    lossy_settled: SettledRule | None = None,
) -> SolveStats:
    """Run sweeps until every row is done; ``state`` is updated in place.

    Args:
        problem: the method (step function, acceptance rule, draft rule).
        state: committed prefixes and limits; ``state.length >= 1`` for every row.
        window: values evaluated per sweep (drafts + 1); 1 is sequential decoding.
        record: keep a :class:`SweepRecord` per sweep (costs a copy to CPU each sweep).
        on_sweep: called after every sweep (progress bars).
        block: block mode (CLLM's decoder): the values are cut into blocks of ``window``
            positions; a block is iterated until all of it is committed, and its slots are drafted
            once, when the block starts (no refill); commits never cross a block's end.
        lossy_sweep_cap: LOSSY early exit (CEED-VLA): after this many sweeps on one window (one
            block in block mode) commit the window's current values whether or not they have
            converged. Counted in ``SolveStats.lossy``. None (the default) is exact.
        lossy_settled: LOSSY relaxed convergence (CEED-VLA): ``rule(old, new)`` gets the drafts
            fed to a sweep (B, D, *F) and the sweep's outputs at the same positions (B, D, *F) and
            returns (B, D) True where a draft counts as settled; a window (block) whose drafts are
            all settled up to its budget is committed as it stands. Exact Jacobi is the rule
            ``old == new``; counted in ``SolveStats.lossy``. None (the default) is exact.
    Returns:
        exact pass and acceptance counts.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if lossy_sweep_cap is not None and lossy_sweep_cap < 1:
        raise ValueError(f"lossy_sweep_cap must be >= 1 sweep or None (exact), got {lossy_sweep_cap}")
    drafts_per_window = window - 1
    if block:
        state.block_end = state.length + window
    drafts = problem.draft(state, None, torch.ones_like(state.window_positions(drafts_per_window), dtype=torch.bool))
    log, trajectory = _PassLog(), []
    while not bool(state.done.all()):  # the one device sync per sweep
        running = ~state.done
        decision = problem.sweep(state, drafts)
        n_commit, lossy = _clamp(state, drafts, decision, running, lossy_sweep_cap, lossy_settled)
        if record:
            trajectory.append(_record(state, drafts, decision, n_commit))
        _commit(state, decision.values, n_commit)
        fresh_block = _advance(state, n_commit, running, window)
        state.done |= _finished(state, decision, running, n_commit)
        problem.rollback(state)
        carried, fresh = decision.proposals.shift(n_commit, drafts_per_window)
        drafts = problem.draft(state, carried, fresh if fresh_block is None else fresh | fresh_block[:, None])
        log.add(n_commit, torch.where(running, decision.n_accepted, 0), running, lossy)
        if on_sweep is not None:
            on_sweep()
    return log.stats(state.length.shape[0], window, trajectory)


def _finished(state: FixedPointState, decision: Acceptance, running: Tensor, n_commit: Tensor) -> Tensor:
    """(B,) rows that reached their limit or committed a stop value this sweep (a stop value past a block's
    end, where the commit was cut, is not committed and ends nothing)."""
    finished = state.length >= state.limit
    if decision.finished is not None:
        finished |= decision.finished & running & (n_commit >= decision.n_commit)
    return finished


class _PassLog:
    """Per-pass counts of a solve, kept on the device until the end."""

    def __init__(self) -> None:
        self.committed: list[Tensor] = []
        self.accepted: list[Tensor] = []
        self.active: list[Tensor] = []
        self.lossy: list[Tensor] = []

    def add(self, committed: Tensor, accepted: Tensor, active: Tensor, lossy: Tensor) -> None:
        for log, value in zip((self.committed, self.accepted, self.active, self.lossy), (committed, accepted, active, lossy)):
            log.append(value)

    def stats(self, rows: int, window: int, trajectory: list[SweepRecord]) -> SolveStats:
        return SolveStats(forward_passes=len(self.committed), committed=_stack(self.committed, rows, torch.long),
                          accepted=_stack(self.accepted, rows, torch.long), active=_stack(self.active, rows, torch.bool),
                          lossy=_stack(self.lossy, rows, torch.long), window=window, trajectory=trajectory)


def _clamp(state: FixedPointState, drafts: Drafts, decision: Acceptance, running: Tensor, cap: int | None,
           settled: SettledRule | None) -> tuple[Tensor, Tensor]:
    """(B,) values to commit after each row's budget (and block end), and how many of them the lossy exit forced."""
    budget = state.limit - state.length
    if state.block_end is not None:
        budget = torch.minimum(budget, state.block_end - state.length)
    budget = budget.clamp(max=decision.values.shape[1])  # (B,)
    n_commit = torch.where(running, torch.minimum(decision.n_commit, budget), 0)
    forced = _forced(state, drafts, decision, budget, cap, settled)
    if forced is None:
        return n_commit, torch.zeros_like(n_commit)
    forced = running & forced & (n_commit < budget)
    return torch.where(forced, budget, n_commit), torch.where(forced, budget - n_commit, 0)


def _forced(state: FixedPointState, drafts: Drafts, decision: Acceptance, budget: Tensor, cap: int | None,
            settled: SettledRule | None) -> Tensor | None:
    """(B,) rows whose window the LOSSY early exit commits as it stands this sweep, or None when exact."""
    if cap is None and settled is None:
        return None
    forced = torch.zeros_like(budget, dtype=torch.bool)
    if cap is not None:
        forced |= state.sweeps_on_window + 1 >= cap
    if settled is not None:
        d = decision.values.shape[1] - 1  # drafts fed this sweep (fewer than D under a width policy)
        close = settled(drafts.values[:, :d], decision.values[:, :d])  # (B, d): a draft vs the output at its position
        beyond = torch.arange(d, device=close.device)[None, :] >= budget[:, None] - 1  # b values rest on b - 1 drafts
        forced |= (close | beyond).all(dim=1)
    return forced


def _advance(state: FixedPointState, n_commit: Tensor, running: Tensor, window: int) -> Tensor | None:
    """Count sweeps on the current window or block; in block mode start the next block, returning
    (B,) True for rows whose block just ended (all their slots are drafted afresh)."""
    if state.block_end is None:
        state.sweeps_on_window = torch.where(n_commit > 0, 0, state.sweeps_on_window + running.long())
        return None
    ended = running & (state.length >= state.block_end)
    state.block_end = torch.where(ended, state.length + window, state.block_end)
    state.sweeps_on_window = torch.where(ended, 0, state.sweeps_on_window + running.long())
    return ended


def _stack(per_pass: list[Tensor], rows: int, dtype: torch.dtype) -> Tensor:
    """(P, B) on the CPU from P tensors of shape (B,); (0, B) when no pass was made."""
    return torch.stack(per_pass).cpu() if per_pass else torch.zeros(0, rows, dtype=dtype)


def _commit(state: FixedPointState, values: Tensor, n_commit: Tensor) -> None:
    """Write ``values[:, :n_commit]`` (B, D+1, *F) after each row's prefix."""
    offsets = torch.arange(values.shape[1], device=values.device)
    index = state.length[:, None] + offsets  # (B, D+1); in range: capacity >= limit + window
    keep_new = (offsets[None, :] < n_commit[:, None]).reshape(*index.shape, *([1] * (values.dim() - 2)))
    old = take_positions(state.values, index)
    expanded = index.reshape(*index.shape, *([1] * (values.dim() - 2))).expand_as(values)
    state.values.scatter_(1, expanded, torch.where(keep_new, values.to(state.values.dtype), old))
    state.length = state.length + n_commit  # a new tensor: contexts handed out earlier keep their view


def _record(state: FixedPointState, drafts: Drafts, decision: Acceptance, n_commit: Tensor) -> SweepRecord:
    return SweepRecord(
        start=state.length.cpu().clone(),
        drafts=drafts.values.cpu().clone(),
        values=decision.values.cpu().clone(),
        n_accepted=decision.n_accepted.cpu().clone(),
        n_commit=n_commit.cpu().clone(),
    )


__all__ = ["Acceptance", "Drafts", "FixedPointState", "JacobiProblem", "SettledRule", "SolveStats", "SweepRecord", "solve"]
