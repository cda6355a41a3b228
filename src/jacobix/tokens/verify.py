"""The one verifier of token decoding: one forward over every candidate row, then a pure rule.

A sweep feeds ``[last committed token] + drafts`` for each of the ``R`` candidate sequences of
each row, as ``B * R`` rows of one model batch with the position-indexed cache (sibling rows
share the row's committed prefix), forms the target distribution at every position (guidance,
logits processors, temperature, top-k, top-p) and applies one acceptance rule from
:mod:`jacobix.core.acceptance`: exact match (greedy, the longest match among candidates),
speculative sampling (one candidate) or recursive rejection over fixed candidates (several).
Everything stays on the device; the engine makes the one host sync per sweep.

Classifier-free guidance runs conditional and unconditional rows in one batch (``2B`` cache
rows, conditional first); both see the same drafts and roll back together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from jacobix.core.acceptance import candidates_accept, leading_true, speculative_accept
from jacobix.core.engine import FixedPointState
from jacobix.core.tree import path_moves, tree_accept, tree_layout
from jacobix.core.sampling import Randomness, LogitsProcessor, SamplingConfig, process_logits, target_probs
from jacobix.models.protocol import Cache, CausalLM
from jacobix.tokens.proposers.base import Candidates


@dataclass(frozen=True)
class GuidanceShift:
    """Classifier-free guidance: ``logits = uncond + scale * (cond - uncond)``.

    Attributes:
        scale: guidance scale; 1 reproduces the conditional model.
        position_shift: (B,) unconditional prompt length minus conditional prompt length.
    """

    scale: float
    position_shift: Tensor


@dataclass(frozen=True)
class Verdict:
    """What one verification decided, per row.

    Attributes:
        winner: (B,) the candidate whose prefix was accepted (0 with one candidate).
        n_accepted: (B,) drafts accepted.
        values: (B, W) the winner's values for the window: accepted drafts, then the recovered or
            bonus token at slot ``n_accepted``; later slots hold the winner's outputs (greedy) or
            drafts (sampling).
        n_commit: (B,) values to commit (``n_accepted + 1``, cut after an end-of-sequence token).
        finished: (B,) rows that committed an end-of-sequence token, or None.
        matched: (B, R) drafts each candidate row matched (policy statistics).
        outputs: (B, R, W) greedy argmax of every candidate row, or None when sampling.
        p_target: (B, W, V) the winner's target distributions when sampling, else None.
        off_trunk: (B,) slot at which a draft tree's accepted path left the trunk (W: it never
            did), or None without a tree.
    """

    winner: Tensor
    n_accepted: Tensor
    values: Tensor
    n_commit: Tensor
    finished: Tensor | None
    matched: Tensor
    outputs: Tensor | None
    p_target: Tensor | None
    off_trunk: Tensor | None = None


class Verifier:
    """One forward over ``B * R`` candidate rows and the acceptance rule.

    Args:
        model: a :class:`~jacobix.models.protocol.CausalLM`.
        cache: its cache with ``B * R`` rows (``2B`` with guidance, which needs ``R = 1``).
        candidates: R, candidate sequences per row.
        prompt_length: (B,) prompt tokens per row.
        sampling: temperature, top-k, top-p; greedy selects the exact-match rule.
        processors: logits processors applied at every window position.
        guidance: classifier-free guidance, or None.
        eos_token_ids: a row stops after committing any of these tokens; empty for none.
        generator: randomness of the acceptance rule.
        prob_dtype: dtype of probabilities (float64 for float64 models, else float32).
        max_position: last cache slot; inputs past it only feed outputs that are never committed.
    """

    def __init__(self, model: CausalLM, cache: Cache, *, candidates: int, prompt_length: Tensor,
                 sampling: SamplingConfig, processors: Sequence[LogitsProcessor], guidance: GuidanceShift | None,
                 eos_token_ids: Sequence[int], generator: Randomness, prob_dtype: torch.dtype,
                 max_position: int) -> None:
        if guidance is not None and candidates > 1:
            raise ValueError("several candidates per pass run without classifier-free guidance; "
                             "use LookaheadConfig(verify=1) with cfg_scale")
        self.model, self.cache, self.candidates = model, cache, candidates
        self.prompt_length = prompt_length
        self.sampling, self.processors, self.guidance = sampling, tuple(processors), guidance
        self.eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=prompt_length.device)
        self.generator, self.prob_dtype, self.max_position = generator, prob_dtype, max_position
        self._moves: tuple[Tensor, Tensor] | None = None  # a tree pass's cache moves, made at rollback

    @property
    def forward_rows(self) -> int:
        """Rows of one pass: prompts times candidates, doubled by guidance (what a pass's cost scales with)."""
        return len(self.prompt_length) * self.candidates * (1 if self.guidance is None else 2)

    def logits(self, tokens: Tensor, positions: Tensor, embeds: Tensor | None = None, cache: Cache | None = None,
               tree: Tensor | None = None) -> Tensor:
        """Guided, processed logits (N, W, V) for tokens (N, W) at positions (N, W) of the N rows
        (of ``cache``, by default the verifier's own); ``tree`` (W, W) makes the window a draft tree."""
        cache = self.cache if cache is None else cache
        slots = positions.clamp(max=self.max_position)
        extra = {} if embeds is None else {"embeds": embeds}
        if tree is not None:
            extra["tree"] = tree
        if self.guidance is None:
            logits = self.model.forward(tokens, slots, cache, **extra)
        else:
            shifted = (positions + self.guidance.position_shift[:, None]).clamp(max=self.max_position)
            doubled = {k: v if k == "tree" else torch.cat([v, v]) for k, v in extra.items()}
            both = self.model.forward(torch.cat([tokens, tokens]), torch.cat([slots, shifted]), cache, **doubled)
            cond, uncond = both.chunk(2)  # (B, W, V) each
            logits = uncond + self.guidance.scale * (cond - uncond)
        prompt = self.prompt_length.repeat(tokens.shape[0] // len(self.prompt_length))
        return process_logits(logits, positions + 1 - prompt[:, None], self.sampling, self.processors)

    def verify(self, state: FixedPointState, candidates: Candidates, fed: int) -> Verdict:
        """Test the first ``fed`` drafts of every candidate after each row's committed prefix.

        Cache rows are candidate-major (row ``i * B + b`` holds candidate ``i`` of sequence ``b``),
        so a pass that feeds no draft runs the ``B`` first rows alone, on a view of the cache,
        where the cache offers one (``narrow_rows``); rollback then copies the slot to the siblings.
        """
        self._moves = None
        if candidates.branches is not None and fed > 0 and not self.sampling.greedy:
            return self._verify_tree(state, candidates, fed)
        b = len(state.length)
        r = 1 if fed == 0 and hasattr(self.cache, "narrow_rows") else self.candidates
        drafts = candidates.tokens[:, :r, :fed]  # (B, r, fed)
        last = state.last_values()[:, None, None].expand(b, r, 1)
        tokens = torch.cat([last, drafts], 2).transpose(0, 1).reshape(r * b, fed + 1)  # (r*B, W) candidate-major
        positions = (state.window_positions(fed + 1) - 1).repeat(r, 1)  # (r*B, W)
        embeds = None
        if candidates.embeds is not None:
            head = self.model.embed(tokens[:, :1])  # (r*B, 1, E)
            embeds = torch.cat([head, candidates.embeds[:, :r, :fed].transpose(0, 1).flatten(0, 1).to(head.dtype)], 1)
        cache = self.cache if r == self.candidates else self.cache.narrow_rows(b)
        logits = self.logits(tokens, positions, embeds, cache).view(r, b, fed + 1, -1).transpose(0, 1)  # (B, r, W, V)
        verifiable = None if candidates.verifiable is None else candidates.verifiable[:, :r, :fed]
        if self.sampling.greedy:
            verdict = self._greedy(drafts, logits.argmax(-1), verifiable)
        else:
            verdict = self._sample(drafts, candidates.p_draft, target_probs(logits).to(self.prob_dtype), verifiable)
        return verdict

    def _verify_tree(self, state: FixedPointState, candidates: Candidates, fed: int) -> Verdict:
        """One forward over the trunk of ``fed`` drafts and the tree's branches, then the tree rule."""
        b = len(state.length)
        k = candidates.branches.shape[2]
        layout = tree_layout(fed + 1, k, candidates.branches.shape[1] + 1)
        span = layout.depth - 1
        drafts = candidates.tokens[:, 0, :fed]  # (B, fed)
        table = torch.cat([state.last_values()[:, None], drafts, candidates.branches[:, :span].flatten(1)], 1)
        device = table.device
        root = state.length - 1  # (B,) the last committed token's position
        positions = root[:, None] + layout.node_depth.to(device)  # (B, N)
        logits = self.logits(table[:, layout.source.to(device)], positions, tree=layout.ancestors.to(device))
        probs = target_probs(logits).to(self.prob_dtype)  # (B, N, V)
        laws = candidates.branch_laws[:, :span].to(self.prob_dtype)  # (B, span, K, V)
        verdict = tree_accept(layout, table, laws, candidates.p_draft[:, 0, :fed].to(self.prob_dtype), probs,
                              self.generator)
        roots = root.clamp(max=self.max_position)
        if self.guidance is not None:
            roots = torch.cat([roots, (root + self.guidance.position_shift).clamp(max=self.max_position)])
        self._moves = path_moves(verdict.repeat(len(roots) // b), roots)
        rows = torch.arange(b, device=device)
        values, n_accepted = verdict.values, verdict.n_accepted
        matched = n_accepted[:, None]  # (B, 1) the width policy's reward: drafts accepted, branches included
        p_target = probs[rows[:, None], verdict.path]  # (B, W, V) along the path, the trunk past it
        n_commit, finished = self._stop_at_eos(values, n_accepted + 1)
        return Verdict(torch.zeros_like(n_accepted), n_accepted, values, n_commit, finished, matched, None, p_target,
                       verdict.off_trunk)

    def _greedy(self, drafts: Tensor, outputs: Tensor, verifiable: Tensor | None) -> Verdict:
        """Longest exact match among candidates (ties: the lowest index)."""
        same = drafts == outputs[..., :-1]  # (B, R, fed)
        matched = leading_true(same if verifiable is None else same & verifiable)  # (B, R)
        winner = (matched == matched.max(1, keepdim=True).values).long().argmax(1)  # (B,)
        rows = torch.arange(len(winner), device=winner.device)
        values, n_accepted = outputs[rows, winner], matched[rows, winner]
        return self._finish(winner, n_accepted, values, matched, outputs, None)

    def _sample(self, drafts: Tensor, p_draft: Tensor | None, probs: Tensor, verifiable: Tensor | None) -> Verdict:
        """Speculative sampling (one candidate) or recursive rejection over fixed candidates."""
        b, r, fed = drafts.shape
        rows = torch.arange(b, device=drafts.device)
        if r == 1:
            q = F.one_hot(drafts[:, 0], probs.shape[-1]) if p_draft is None else p_draft[:, 0, :fed]
            check = None if verifiable is None else verifiable[:, 0]
            n_accepted, next_token = speculative_accept(drafts[:, 0], q, probs[:, 0], self.generator, check)
            winner = torch.zeros_like(n_accepted)
        else:
            # Recursive rejection treats every candidate as fixed: drafts sampled in earlier passes
            # are fixed with respect to this pass's randomness, so the output stays exact (they
            # only pass less often than under min(1, p/q)).
            winner, n_accepted, next_token = candidates_accept(drafts, probs, self.generator)
        values = torch.cat([drafts[rows, winner], next_token[:, None]], 1)  # (B, W)
        values.scatter_(1, n_accepted[:, None], next_token[:, None])
        matched = torch.minimum(leading_true(drafts == values[:, None, :fed]), n_accepted[:, None] + 1)  # (B, r)
        return self._finish(winner, n_accepted, values, matched, None, probs[rows, winner])

    def _finish(self, winner: Tensor, n_accepted: Tensor, values: Tensor, matched: Tensor,
                outputs: Tensor | None, p_target: Tensor | None) -> Verdict:
        n_commit, finished = self._stop_at_eos(values, n_accepted + 1)
        return Verdict(winner, n_accepted, values, n_commit, finished, matched, outputs, p_target)

    def _stop_at_eos(self, values: Tensor, n_commit: Tensor) -> tuple[Tensor, Tensor | None]:
        """Cut each row's commit after its first end-of-sequence token."""
        if len(self.eos) == 0:
            return n_commit, None
        offsets = torch.arange(values.shape[1], device=values.device)
        is_eos = torch.isin(values, self.eos) & (offsets < n_commit[:, None])  # (B, W)
        first = torch.where(is_eos, offsets, values.shape[1]).min(dim=1).values  # (B,)
        finished = first < n_commit
        return torch.where(finished, first + 1, n_commit), finished

    def rollback(self, state: FixedPointState, start: Tensor, winner: Tensor | None) -> None:
        """Keep each row's committed prefix; with several candidates copy the winner's slots written
        since ``start`` (B,) (the position fed first by the last pass) into its sibling rows."""
        kept = state.length - 1  # (B,) the last committed token is fed again by the next sweep
        r, b = self.candidates, len(kept)
        if self._moves is not None:  # a tree pass: its accepted branch nodes go to their positions
            self.cache.move_slots(*self._moves)
            self._moves = None
        if r > 1 and winner is not None:
            count = (kept - start).clamp_min(1)  # (B,) slots the pass wrote that are now committed
            span = torch.arange(int(count.max()), device=kept.device)
            positions = start[:, None] + torch.minimum(span[None], count[:, None] - 1)  # (B, P)
            source = winner.to(kept.device) * b + torch.arange(b, device=kept.device)  # (B,) candidate-major rows
            self.cache.copy_slots(source.repeat(r), positions.repeat(r, 1))
        if self.guidance is not None:
            self.cache.rollback(torch.cat([kept, kept + self.guidance.position_shift]))
        else:
            self.cache.rollback(kept.repeat(r))


__all__ = ["GuidanceShift", "Verdict", "Verifier"]
