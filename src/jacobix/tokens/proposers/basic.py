"""Jacobi iteration's proposer and the draft rules for fresh window slots.

An init rule returns, for every slot of the window, a token and the distribution it was drawn
from (``None`` when the token is fixed, i.e. one-hot). Speculative Jacobi decoding divides by
that distribution, so it stays lossless whatever the rule; a good rule only makes more drafts
pass. The engine uses the result for the fresh slots alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from jacobix.core.sampling import Randomness, randint, uniform
from jacobix.tokens.proposers.base import Candidates, DraftSource, ProposalContext, Proposer, one_hot


@dataclass(frozen=True)
class DraftContext:
    """What an init rule may look at.

    Attributes:
        canvas: (B, C) committed tokens of each row, followed by the carried drafts; slots at
            fresh positions and beyond hold placeholders.
        positions: (B, D) absolute position of each window slot.
        fresh: (B, D) True for slots to fill; always a suffix of the row's window.
        prompt_length: (B,) prompt tokens of each row.
        vocab_size: number of tokens.
        generator: explicit randomness.
    """

    canvas: Tensor
    positions: Tensor
    fresh: Tensor
    prompt_length: Tensor
    vocab_size: int
    generator: Randomness


class DraftInit(Protocol):
    """Returns tokens (B, D) and their draft distribution (B, D, V), or None for fixed tokens."""

    def __call__(self, context: DraftContext) -> tuple[Tensor, Tensor | None]: ...


@dataclass(frozen=True)
class RandomInit:
    """Uniformly random tokens. Their draft distribution is uniform, not one-hot: dividing by
    1/V instead of 1 makes SJD accept a random draft with probability ``sum_v min(p_v, 1/V)``
    instead of ``1/V``."""

    def __call__(self, context: DraftContext) -> tuple[Tensor, Tensor | None]:
        b, d = context.positions.shape
        tokens = randint(context.vocab_size, (b, d), context.canvas.device, context.generator)  # (B, D)
        p_draft = torch.full((b, d, context.vocab_size), 1.0 / context.vocab_size, device=context.canvas.device)
        return tokens, p_draft


@dataclass(frozen=True)
class CopyInit:
    """Copy the token ``offset`` positions back; where that lies in the prompt, repeat the last token.

    ``CopyInit(1)`` repeats the last known token. ``CopyInit(row_length)`` is SJD's vertical
    init for image grids (the token one row above), which the SJD authors' code leaves out.
    A fresh slot whose source is itself fresh copies what that slot copies.
    """

    offset: int = 1

    def __post_init__(self) -> None:
        if self.offset < 1:
            raise ValueError(f"CopyInit.offset must be >= 1, got {self.offset}")

    def __call__(self, context: DraftContext) -> tuple[Tensor, Tensor | None]:
        positions, offset = context.positions, self.offset  # (B, D)
        first_fresh = positions[:, :1] + (~context.fresh).sum(1, keepdim=True)  # (B, 1)
        # Copying from a fresh slot copies what that slot copies: hop back whole offsets until the
        # source is not fresh, i.e. k = ceil((p - first_fresh + 1) / offset) hops (at least one).
        hops = torch.div(positions - first_fresh + offset, offset, rounding_mode="floor").clamp_min(1)
        source = positions - hops * offset  # (B, D)
        source = torch.where(source >= context.prompt_length[:, None], source, first_fresh - 1)
        return context.canvas.gather(1, source.clamp_min(0)), None


@dataclass(frozen=True)
class ContextInit:
    """Tokens drawn uniformly from the row's own prompt and committed text, CLLM's draft init.

    Consistency-distilled models are trained on Jacobi trajectories that start from such drafts,
    so decoding them with the same rule matches their training. The drafts are returned as fixed
    (one-hot): the verification randomness is independent of the drafting randomness, so SJD
    stays lossless with any fixed draft.
    """

    def __call__(self, context: DraftContext) -> tuple[Tensor, Tensor | None]:
        committed = context.positions[:, :1].clamp_min(1)  # (B, 1) the first window slot sits at the committed length
        u = uniform(tuple(context.positions.shape), context.canvas.new_empty((), dtype=torch.float32), context.generator)
        source = (u * committed).long().clamp(max=committed - 1)  # (B, D) uniform in [0, committed)
        return context.canvas.gather(1, source), None


INITS = ("random", "repeat", "row-above", "context")


def resolve_init(init: str | DraftInit, *, row_length: int | None = None) -> DraftInit:
    """An init rule from its name: ``random``, ``repeat`` (last token), ``row-above`` or ``context``."""
    if not isinstance(init, str):
        return init
    if init == "random":
        return RandomInit()
    if init == "repeat":
        return CopyInit(1)
    if init == "row-above":
        if row_length is None or row_length < 1:
            raise ValueError("init='row-above' needs row_length=<tokens per image row>")
        return CopyInit(row_length)
    if init == "context":
        return ContextInit()
    raise ValueError(f"unknown init {init!r}; use 'random', 'repeat', 'row-above', 'context' or a DraftInit callable")


class JacobiProposer(Proposer):
    """Jacobi iteration: carried slots keep the model's outputs of the last sweep (greedy: its
    argmax; sampling: a draw from its target, carrying that target as the draft distribution);
    fresh slots come from a draft rule.

    Args:
        init: the draft rule for fresh slots (a :class:`DraftInit`, default uniformly random).
    """

    sources = (DraftSource("jacobi", 0.1),)

    def __init__(self, init: DraftInit | None = None) -> None:
        self.init = RandomInit() if init is None else init

    def propose(self, context: ProposalContext) -> Candidates:
        draft_context = DraftContext(context.canvas, context.positions, context.fresh, context.prompt_length,
                                     context.vocab_size, context.generator)
        tokens, p_init = self.init(draft_context)  # (B, D), (B, D, V) or None
        carried = context.carried
        values = tokens if carried is None else torch.where(context.fresh, tokens, carried.values)
        if context.greedy:
            return Candidates.single(values)
        p_init = one_hot(tokens, context.vocab_size) if p_init is None else p_init
        if carried is None:
            return Candidates.single(values, p_init)
        p_carried = carried.p_draft if carried.p_draft is not None else one_hot(carried.values, context.vocab_size)
        fresh = context.fresh[..., None]
        return Candidates.single(values, torch.where(fresh, p_init.to(p_carried.dtype), p_carried))


__all__ = ["INITS", "ContextInit", "CopyInit", "DraftContext", "DraftInit", "JacobiProposer", "RandomInit", "resolve_init"]

