"""Draft initialisation: how fresh window slots get their first guess.

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
    generator: torch.Generator | None


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
        tokens = torch.randint(
            context.vocab_size, (b, d), generator=context.generator, device=context.canvas.device
        )  # (B, D)
        p_draft = torch.full((b, d, context.vocab_size), 1.0 / context.vocab_size, device=context.canvas.device)
        return tokens, p_draft


@dataclass(frozen=True)
class CopyInit:
    """Copy the token ``offset`` positions back; where that lies in the prompt, repeat the last token.

    ``CopyInit(1)`` repeats the last known token. ``CopyInit(row_length)`` is SJD's vertical
    init for image grids (the token one row above), which the SJD authors' code leaves out.
    Slots are filled left to right, so a fresh slot may copy from an earlier fresh slot.
    """

    offset: int = 1

    def __post_init__(self) -> None:
        if self.offset < 1:
            raise ValueError(f"CopyInit.offset must be >= 1, got {self.offset}")

    def __call__(self, context: DraftContext) -> tuple[Tensor, Tensor | None]:
        canvas = context.canvas.clone()  # (B, C)
        tokens = torch.empty_like(context.positions)  # (B, D)
        for slot in range(context.positions.shape[1]):
            position = context.positions[:, slot : slot + 1]  # (B, 1)
            source = position - self.offset
            source = torch.where(source >= context.prompt_length[:, None], source, position - 1)
            token = canvas.gather(1, source)  # (B, 1)
            fresh = context.fresh[:, slot : slot + 1]
            canvas.scatter_(1, position, torch.where(fresh, token, canvas.gather(1, position)))
            tokens[:, slot : slot + 1] = token
        return tokens, None


def resolve_init(init: str | DraftInit, *, row_length: int | None = None) -> DraftInit:
    """An init rule from its name: ``random``, ``repeat`` (last token) or ``row-above``."""
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
    raise ValueError(f"unknown init {init!r}; use 'random', 'repeat', 'row-above' or a DraftInit callable")
