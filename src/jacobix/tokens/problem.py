"""Token decoding on the engine: sequential, greedy Jacobi and Speculative Jacobi Decoding.

One :class:`TokenProblem` serves every method: its step is one causal forward of the model over
``[last committed token] + drafts``; its rule is exact match (greedy) or speculative
acceptance (sampling). Classifier-free guidance runs conditional and unconditional rows in one
batch; both see the same drafts and roll back together, because they share the engine's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from jacobix.core.acceptance import greedy_accept, speculative_accept
from jacobix.tokens.proposers.basic import DraftContext, DraftInit
from jacobix.core.engine import Acceptance, Drafts, FixedPointState
from jacobix.core.sampling import LogitsProcessor, SamplingConfig, process_logits, sample, target_probs


class Cache(Protocol):
    def rollback(self, lengths: Tensor) -> None: ...


class CausalLM(Protocol):
    """What jacobix needs of a token model: logits for a window at given positions, with a cache."""

    vocab_size: int

    def new_cache(self, batch_size: int, capacity: int) -> Cache: ...

    def forward(self, tokens: Tensor, positions: Tensor, cache: Cache) -> Tensor: ...


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: ``logits = uncond + scale * (cond - uncond)``.

    Attributes:
        scale: guidance scale; 1 reproduces the conditional model.
        position_shift: (B,) unconditional prompt length minus conditional prompt length.
        last_prompt_token: (B,) last token of each unconditional prompt, fed by the first sweep
            (later sweeps feed the last generated token, which both rows share).
    """

    scale: float
    position_shift: Tensor
    last_prompt_token: Tensor


class TokenProblem:
    """The engine's step, rule and drafts for token models.

    Args:
        model: a :class:`CausalLM`.
        cache: its cache, with ``B`` rows (``2B`` with guidance: conditional rows first).
        prompt_length: (B,) prompt tokens per row.
        sampling: temperature, top-k, top-p; greedy selects the exact-match rule.
        processors: user logits processors, applied at every window position.
        init: draft rule for fresh slots.
        generator: randomness for sampling and random drafts.
        guidance: classifier-free guidance, or None.
        eos_token_id: a row stops after committing this token, or None.
        prob_dtype: dtype of probabilities (float64 for float64 models, else float32).
        max_position: last cache slot. Window slots past a row's limit are clamped to it: their
            outputs are never committed, so the cache needs no room for them.
    """

    def __init__(
        self,
        model: CausalLM,
        cache: Cache,
        *,
        prompt_length: Tensor,
        sampling: SamplingConfig,
        processors: Sequence[LogitsProcessor],
        init: DraftInit,
        generator: torch.Generator | None,
        guidance: Guidance | None,
        eos_token_id: int | None,
        prob_dtype: torch.dtype = torch.float32,
        max_position: int | None = None,
    ) -> None:
        self.model, self.cache = model, cache
        self.prompt_length = prompt_length
        self.sampling, self.processors = sampling, tuple(processors)
        self.init, self.generator = init, generator
        self.guidance, self.eos_token_id = guidance, eos_token_id
        self.vocab_size = model.vocab_size
        self.prob_dtype = prob_dtype
        self.max_position = max_position

    def logits(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Guided logits (B, W, V) for tokens (B, W) at positions (B, W)."""
        if self.max_position is not None:
            # Inputs at or past a row's limit only feed outputs past it, which are never committed.
            positions = positions.clamp(max=self.max_position)
        if self.guidance is None:
            return self.model.forward(tokens, positions, self.cache)
        in_prompt = positions[:, :1] + 1 == self.prompt_length[:, None]  # (B, 1) first sweep of the row
        uncond_first = torch.where(in_prompt, self.guidance.last_prompt_token[:, None], tokens[:, :1])
        both_tokens = torch.cat([tokens, torch.cat([uncond_first, tokens[:, 1:]], dim=1)])  # (2B, W)
        both_positions = torch.cat([positions, positions + self.guidance.position_shift[:, None]])
        if self.max_position is not None:
            both_positions = both_positions.clamp(max=self.max_position)
        cond, uncond = self.model.forward(both_tokens, both_positions, self.cache).chunk(2)  # (B, W, V) each
        return uncond + self.guidance.scale * (cond - uncond)

    def sweep(self, state: FixedPointState, drafts: Drafts) -> Acceptance:
        b, d = drafts.values.shape
        tokens = torch.cat([state.last_values()[:, None], drafts.values], dim=1)  # (B, W)
        positions = state.window_positions(d + 1) - 1  # (B, W)
        logits = self.logits(tokens, positions)  # (B, W, V)
        new_positions = positions + 1 - self.prompt_length[:, None]
        logits = process_logits(logits, new_positions, self.sampling, self.processors)
        if self.sampling.greedy:
            values = logits.argmax(-1)  # (B, W)
            n_accepted = greedy_accept(drafts.values, values)
            proposals = Drafts(values)
        else:
            p_target = target_probs(logits).to(self.prob_dtype)  # (B, W, V)
            p_draft = drafts.p_draft if drafts.p_draft is not None else self._one_hot(drafts.values)
            n_accepted, next_token = speculative_accept(drafts.values, p_draft, p_target, self.generator)
            values = torch.cat([drafts.values, drafts.values.new_zeros(b, 1)], dim=1)  # (B, W)
            values.scatter_(1, n_accepted[:, None], next_token[:, None])
            proposals = Drafts(sample(p_target, self.generator), p_target)
        n_commit, finished = self._stop_at_eos(values, n_accepted + 1)
        return Acceptance(n_commit=n_commit, values=values, proposals=proposals, n_accepted=n_accepted, finished=finished)

    def _stop_at_eos(self, values: Tensor, n_commit: Tensor) -> tuple[Tensor, Tensor | None]:
        """Cut each row's commit after its first end-of-sequence token."""
        if self.eos_token_id is None:
            return n_commit, None
        offsets = torch.arange(values.shape[1], device=values.device)
        is_eos = (values == self.eos_token_id) & (offsets < n_commit[:, None])  # (B, W)
        first = torch.where(is_eos, offsets, values.shape[1]).min(dim=1).values  # (B,)
        finished = first < n_commit
        return torch.where(finished, first + 1, n_commit), finished

    def _one_hot(self, tokens: Tensor) -> Tensor:
        return F.one_hot(tokens, self.vocab_size).to(self.prob_dtype)  # (..., V)

    def draft(self, state: FixedPointState, carried: Drafts | None, fresh: Tensor) -> Drafts:
        positions = state.window_positions(fresh.shape[1])  # (B, D)
        canvas = state.values.clone()  # (B, C)
        if carried is not None:
            current = canvas.gather(1, positions)
            canvas.scatter_(1, positions, torch.where(fresh, current, carried.values))
        context = DraftContext(canvas, positions, fresh, self.prompt_length, self.vocab_size, self.generator)
        tokens, p_init = self.init(context)  # (B, D), (B, D, V) or None
        values = tokens if carried is None else torch.where(fresh, tokens, carried.values)
        if self.sampling.greedy:
            return Drafts(values)
        p_init = self._one_hot(tokens) if p_init is None else p_init.to(self.prob_dtype)
        if carried is None:
            return Drafts(values, p_init)
        p_carried = carried.p_draft if carried.p_draft is not None else self._one_hot(carried.values)
        return Drafts(values, torch.where(fresh[..., None], p_init, p_carried))

    def rollback(self, state: FixedPointState) -> None:
        kept = state.length - 1  # the last committed token is fed again by the next sweep
        self.cache.rollback(kept if self.guidance is None else torch.cat([kept, kept + self.guidance.position_shift]))
