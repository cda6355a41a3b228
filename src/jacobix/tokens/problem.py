"""Token decoding as one engine problem: a proposer, the verifier and a width policy.

:class:`TokenProblem` is the :class:`~jacobix.core.engine.JacobiProblem` of every token method.
Before a sweep it asks the proposer for candidates (:mod:`jacobix.tokens.proposers`); a sweep
asks the width policy how many drafts to feed (:mod:`jacobix.tokens.width`), lets the
:class:`~jacobix.tokens.verify.Verifier` run one forward and its acceptance rule, hands the
outputs back to the proposer as the next carried drafts, and times the pass for the policy's
cost model. Drafts the policy did not feed are carried on untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from jacobix.core.sampling import Randomness

from jacobix.core.engine import Acceptance, Drafts, FixedPointState
from jacobix.tokens.width.costs import PassCosts
from jacobix.tokens.width.multiblock import agreement
from jacobix.tokens.width.policy import FixedWidth, WidthPolicy, novel_prefixes
from jacobix.tokens.proposers.base import Candidates, ProposalContext, Proposer, one_hot
from jacobix.tokens.verify import Verdict, Verifier


@dataclass
class ScheduleStats:
    """What the token problem chose: passes per width, estimated pass costs, drafts per source.

    Attributes:
        widths: passes by tokens fed per candidate row (drafts + 1).
        cost_ratio: estimated cost of each width over a one-token pass (adaptive width only).
        rows: passes by candidate rows per sequence.
        drafts_by_source: drafts fed, by source name.
        accepted_by_source: drafts accepted, by source name (the winning candidate's).
        policy_seconds: time spent in the width policy's choices and updates (its own arithmetic).
    """

    widths: dict[int, int] = field(default_factory=dict)
    cost_ratio: dict[int, float] = field(default_factory=dict)
    rows: dict[int, int] = field(default_factory=dict)
    drafts_by_source: dict[str, int] = field(default_factory=dict)
    accepted_by_source: dict[str, int] = field(default_factory=dict)
    policy_seconds: float = 0.0

    @property
    def pool_drafts(self) -> int:
        """Drafts fed from the n-gram pools (text and trajectory)."""
        return sum(n for name, n in self.drafts_by_source.items() if name.startswith(("text", "trajectory")))

    @property
    def pool_accepted(self) -> int:
        return sum(n for name, n in self.accepted_by_source.items() if name.startswith(("text", "trajectory")))

    def summary(self) -> str:
        widths = ", ".join(f"w{w}: {n}" for w, n in sorted(self.widths.items()))
        costs = ", ".join(f"w{w}: {c:.2f}x" for w, c in sorted(self.cost_ratio.items()))
        sources = ", ".join(f"{name} {self.accepted_by_source.get(name, 0)}/{n}"
                            for name, n in self.drafts_by_source.items() if n)
        rows = "; passes by candidates [" + ", ".join(f"r{r}: {n}" for r, n in sorted(self.rows.items())) + "]"
        return (f"passes by width [{widths}]" + (f"; cost vs w1 [{costs}]" if costs else "")
                + f"; drafts accepted/fed [{sources}]" + (rows if len(self.rows) > 1 or 1 not in self.rows else ""))


class TokenProblem:
    """The engine's step, rule and drafts for token models.

    Args:
        verifier: the model, its cache and the acceptance rule.
        proposer: where drafts come from.
        policy: drafts fed per pass (default: all of them).
        costs: where to record each pass's verification time (the adaptive policy reads them), or None.
        generator: randomness of draft rules and redrafts.
        vocab_size: tokens of the model.
        drafts: drafts per window (D).
    """

    def __init__(self, verifier: Verifier, proposer: Proposer, *, policy: WidthPolicy | None, costs: PassCosts | None,
                 generator: Randomness, vocab_size: int, drafts: int) -> None:
        self.verifier, self.proposer, self.costs = verifier, proposer, costs
        self.policy = policy
        self.generator, self.vocab_size = generator, vocab_size
        self.drafts = drafts
        self.fed_per_pass: list[int] = []  # drafts fed per candidate row, one entry per sweep
        self.branch_per_pass: list[Tensor] = []  # (B,) drafts accepted on a draft tree's branches, per sweep
        self._gains: Tensor | None = None  # (B,) drafts accepted so far by each row (the width policy's laggard)
        self._began: float | None = None  # when the previous sweep began
        self._width = 1  # tokens per row fed by the previous pass
        self._pending: tuple | None = None  # the previous pass's outcome, read one pass late
        self._planned: int | None = None  # drafts to feed, when decided before proposing
        self._stale = False  # a proposal was skipped: the carried drafts are not the last outputs
        self.greedy = verifier.sampling.greedy
        self.candidates: Candidates | None = None
        self.stats = ScheduleStats()
        self._written: tuple[Tensor, Tensor] | None = None  # (first position fed (B,), winner (B,))
        self._plan_inputs = (torch.zeros(0, 1, drafts, dtype=torch.long), torch.ones(0, 1, drafts, dtype=torch.bool))

    def draft(self, state: FixedPointState, carried: Drafts | None, fresh: Tensor) -> Drafts:
        self._planned = self._plan(state, fresh.shape[1])
        if self._planned == 0 and carried is not None and self.candidates is not None:
            # Nothing will be fed: skip the proposal. The carried drafts are left as they are and the
            # next proposal starts afresh (all slots fresh), so no stale guess is ever tested.
            self._stale = True
            return carried
        if self._stale:
            fresh, self._stale = torch.ones_like(fresh), False
        positions = state.window_positions(fresh.shape[1])  # (B, D)
        canvas = state.values.clone()  # (B, C)
        if carried is not None:
            canvas.scatter_(1, positions, torch.where(fresh, canvas.gather(1, positions), carried.values))
        context = ProposalContext(canvas, state.length, positions, fresh, carried, self.verifier.prompt_length,
                                  self.vocab_size, self.greedy, self.generator)
        self.candidates = self.proposer.propose(context)
        first = self.candidates
        return Drafts(first.tokens[:, 0], None if first.p_draft is None else first.p_draft[:, 0], first.state)

    def sweep(self, state: FixedPointState, drafts: Drafts) -> Acceptance:
        self._flush()  # the previous pass: its tensors are ready, the engine has synced since
        self._time_pass()
        candidates = self.candidates
        running = ~state.done.cpu()
        source = candidates.source.cpu()
        d = source.shape[2]
        policy = self.policy or FixedWidth(d)
        if self._planned is not None:
            fed = min(self._planned, d)
        else:
            novel = novel_prefixes(candidates.tokens.cpu()) if candidates.count > 1 else torch.ones_like(source, dtype=torch.bool)
            began = time.perf_counter()
            self._tell_batch(policy, state, running)
            fed = min(policy.choose(source[running], novel[running]), d)
            self.stats.policy_seconds += time.perf_counter() - began
        start = state.length - 1
        verdict = self.verifier.verify(state, candidates, fed)
        self._pending = (policy, source, running, verdict, fed, candidates.tokens)
        self._written = (start, verdict.winner)
        return self._acceptance(state, verdict, drafts, fed)

    def finish(self) -> None:
        """Account for the last pass (call once the engine is done)."""
        self._flush()

    def _flush(self) -> None:
        """Learn from the previous pass: the policy's rates, the statistics, the proposer's pools.
        Done one pass late so that reading its outcome on the host costs no extra device sync."""
        if self._pending is None:
            return
        policy, source, running, verdict, fed, drafts = self._pending
        self._pending = None
        began = time.perf_counter()
        matched = verdict.matched.cpu()
        if hasattr(policy, "settle") and verdict.outputs is not None:  # multiblock: which drafts agreed
            rows = torch.arange(len(drafts), device=drafts.device)
            agree = agreement(drafts[rows, verdict.winner, :fed], verdict.outputs[rows, verdict.winner]).cpu()
            policy.settle(agree[running], verdict.n_accepted.cpu()[running])
        if running.all():
            policy.observe(source, matched, fed)
        else:
            policy.observe(source[running], matched[running], fed)
        self.stats.policy_seconds += time.perf_counter() - began
        self._count(fed, source, verdict, running)
        if verdict.outputs is not None and fed > 0:
            self.proposer.observe(verdict.outputs, running)
        self._width = fed + 1

    def _time_pass(self) -> None:
        """Credit the time since the previous sweep began (the whole pass: proposal, forward,
        sampling work, redraft and the engine's bookkeeping) to that pass's width. The engine has
        just synced, so the clock reads finished work without waiting for the device."""
        now = time.perf_counter()
        if self.costs is not None and self._began is not None:
            self.costs.add(self._width, now - self._began)
        self._began = now

    def _plan(self, state: FixedPointState, drafts: int) -> int | None:
        """Drafts the policy will feed, decided before proposing when the proposer has one source
        (its source ids are known without proposing); None: decide at the sweep."""
        if self.policy is None or len(self.proposer.sources) != 1 or self.proposer.candidates != 1:
            return None
        rows = int((~state.done).sum())
        if self._plan_inputs[0].shape[0] != rows:
            shape = (rows, 1, drafts)
            self._plan_inputs = torch.zeros(shape, dtype=torch.long), torch.ones(shape, dtype=torch.bool)
        began = time.perf_counter()
        self._tell_batch(self.policy, state, ~state.done)
        fed = self.policy.choose(*self._plan_inputs)
        self.stats.policy_seconds += time.perf_counter() - began
        return fed

    def _tell_batch(self, policy: WidthPolicy, state: FixedPointState, running: Tensor) -> None:
        """A policy that plans for whole batches (``rows``, ``laggard``) learns how many rows run and
        how far the slowest of them trails in drafts accepted (its total over the rows' mean). A policy
        is kept per batch size, so a new generation starts from what the last one measured."""
        if not hasattr(policy, "laggard"):
            return
        running = running.cpu()
        policy.rows = int(running.sum())
        gains = self._gains[running] if self._gains is not None and policy.rows > 1 else None
        mean = float(gains.mean()) if gains is not None else 0.0
        if mean > 0:  # else the policy keeps what the last batch of its size measured (1 at first)
            policy.laggard = float(gains.min()) / mean

    def probe(self, state: FixedPointState, width: int) -> None:
        """One throw-away pass that feeds ``width - 1`` fresh drafts (pass-cost measurement). It
        writes only cache slots past the committed prefix, which later sweeps overwrite first."""
        d = self.drafts
        drafts = self.draft(state, None, torch.ones(len(state.length), d, dtype=torch.bool, device=state.length.device))
        self._planned = None
        fed = min(width - 1, d)
        self._acceptance(state, self.verifier.verify(state, self.candidates, fed), drafts, fed)

    def _acceptance(self, state: FixedPointState, verdict: Verdict, drafts: Drafts, fed: int) -> Acceptance:
        acceptance = self._decide(state, verdict, drafts, fed)
        slot_state = drafts.state
        extra = acceptance.proposals.values.shape[1] - (0 if slot_state is None else slot_state.shape[1])
        if slot_state is not None and extra > 0:  # the bonus slot was never in the window: zero state
            slot_state = torch.cat([slot_state, slot_state.new_zeros(slot_state.shape[0], extra, *slot_state.shape[2:])], 1)
        acceptance.proposals.state = slot_state
        return acceptance

    def _decide(self, state: FixedPointState, verdict: Verdict, drafts: Drafts, fed: int) -> Acceptance:
        """The engine's view: the winner's values, and the next guesses for positions ``n ..``: the
        redrafted outputs of the ``fed + 1`` evaluated slots, then the winner's drafts not fed."""
        rows = torch.arange(len(verdict.winner), device=verdict.winner.device)
        rest = self.candidates.tokens[rows, verdict.winner, fed + 1 :]  # (B, D - fed - 1) for positions n+fed+1 ..
        if self.greedy:
            values = torch.cat([verdict.values, rest], 1)
            return Acceptance(n_commit=verdict.n_commit, values=values, proposals=Drafts(values),
                              n_accepted=verdict.n_accepted, finished=verdict.finished)
        if fed == 0 and self._planned == 0:
            # Resting at one token a pass: every draft is proposed afresh before any is fed again, so
            # nothing is redrafted or carried (no (B, D, V) draft distributions every pass): a pass
            # costs what a sequential one does.
            values = torch.cat([verdict.values, rest], 1)  # the one slot fed: its value passed or was resampled
            return Acceptance(n_commit=verdict.n_commit, values=values, proposals=Drafts(verdict.values),
                              n_accepted=verdict.n_accepted, finished=verdict.finished)
        positions = state.window_positions(fed + 1)  # (B, fed+1) the positions the outputs are for
        previous, fed_drafts = None, self.candidates
        if fed_drafts.p_draft is not None and fed_drafts.count == 1:  # views, no copy
            previous = Drafts(fed_drafts.tokens[:, 0, :fed], fed_drafts.p_draft[:, 0, :fed])
        redrafted = self.proposer.redraft(verdict.p_target, positions, self.generator, previous)  # (B, fed+1)
        p_all = self.candidates.p_draft
        p_rest = one_hot(rest, self.vocab_size) if p_all is None else p_all[rows, verdict.winner, fed + 1 :]
        proposals = Drafts(torch.cat([redrafted, rest], 1),
                           torch.cat([verdict.p_target, p_rest.to(verdict.p_target.dtype)], 1))
        slots = torch.arange(fed + 1, device=rows.device)
        # Past the committed slot the values are the current iterate (committed only by a lossy cap).
        values = torch.cat([torch.where(slots <= verdict.n_accepted[:, None], verdict.values, redrafted), rest], 1)
        return Acceptance(n_commit=verdict.n_commit, values=values, proposals=proposals,
                          n_accepted=verdict.n_accepted, finished=verdict.finished)

    def rollback(self, state: FixedPointState) -> None:
        start, winner = self._written if self._written is not None else (None, None)
        self.verifier.rollback(state, start, winner)

    def _count(self, fed: int, source: Tensor, verdict: Verdict, running: Tensor) -> None:
        stats = self.stats
        self.fed_per_pass.append(fed)
        accepted = verdict.n_accepted.cpu() * running  # (B,)
        self._gains = accepted.double() if self._gains is None else self._gains + accepted
        branch = torch.zeros(len(running), dtype=torch.long)
        if verdict.off_trunk is not None:
            branch = (verdict.n_accepted - verdict.off_trunk).clamp_min(0).cpu() * running
        self.branch_per_pass.append(branch)
        stats.widths[fed + 1] = stats.widths.get(fed + 1, 0) + 1
        r = verdict.matched.shape[1]
        stats.rows[r] = stats.rows.get(r, 0) + 1
        if fed == 0:
            return
        winner = verdict.winner.cpu()
        won = source[torch.arange(len(winner)), winner, :fed][running].numpy()  # (A, fed)
        hit = np.arange(fed) < verdict.n_accepted.cpu()[running].numpy()[:, None]  # (A, fed)
        fed_counts = np.bincount(won.ravel(), minlength=len(self.proposer.sources))
        hit_counts = np.bincount(won[hit], minlength=len(self.proposer.sources))
        for index, spec in enumerate(self.proposer.sources):
            stats.drafts_by_source[spec.name] = stats.drafts_by_source.get(spec.name, 0) + int(fed_counts[index])
            stats.accepted_by_source[spec.name] = stats.accepted_by_source.get(spec.name, 0) + int(hit_counts[index])


__all__ = ["ScheduleStats", "TokenProblem"]
