"""Multiblock decoding (Jacobi Forcing, arXiv 2512.14681) as a width rule.

Up to ``blocks`` blocks of ``block`` tokens are in flight: the real-active block (the drafts
right after the committed text) and pseudo blocks after it, which see its unverified drafts, as
Jacobi Forcing trains them to. A new block is started once the newest one has settled: at least
``spawn_at`` percent of its slots in its *settled prefix* (the drafts that agree with the
model's prediction from the drafts before them; for the real-active block, its committed tokens). When the real-active block is committed, the next block takes its place.

On jacobix's engine this is a rule for how many drafts a pass feeds: the window always starts at
the committed text and every pass commits the longest verified prefix, so a pseudo block's drafts
are committed as soon as everything before them is (Jacobi Forcing commits only the real-active
block and verifies its successor again from scratch). The choice reads only past passes, so greedy
decoding stays exact (tested token for token). Like every width policy here it learns a pass's
outcome one pass late (when the engine has synced anyway), so its window lags the blocks by a pass.

Worked example (block 4, 2 blocks, spawn at 75%): the first pass feeds 4 drafts, accepts 2 and
commits 3 tokens: 3 of the block's 4 are settled, so a second block starts, and the next pass feeds
the real-active block's last draft plus 4 pseudo-block drafts (5). That pass commits the
real-active block; the pseudo block, which had 1 settled slot, is real-active, and the window is
4 drafts again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, kw_only=True)
class MultiBlock:
    """Multiblock decoding's shape (a field of the decoding spec, ``Decoding.multiblock``).

    Attributes:
        block: tokens per block (Jacobi Forcing decodes with the block size it trained on).
        blocks: most blocks in flight (the paper: 2).
        spawn_at: percent of the newest block that must be settled before the next starts (the paper: 85).
    """

    block: int = 16
    blocks: int = 2
    spawn_at: int = 85

    def __post_init__(self) -> None:
        for name in ("block", "blocks", "spawn_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"MultiBlock.{name} must be a whole number, got {value!r}")
        if self.block < 1 or self.blocks < 1 or not 1 <= self.spawn_at <= 100:
            raise ValueError(f"MultiBlock needs block >= 1, blocks >= 1 and spawn_at in 1..100 (percent), got {self}")

    @property
    def max_drafts(self) -> int:
        """Most drafts a pass feeds: every block in flight."""
        return self.block * self.blocks

    @property
    def spawn_slots(self) -> int:
        """Settled slots of the newest block that start the next: ``ceil(spawn_at% x block)``."""
        return math.ceil(self.spawn_at * self.block / 100)


class MultiBlockWidth:
    """The width policy of :class:`MultiBlock`: the drafts of every block in flight.

    In a batch it follows the rows together: a block starts when the rows' mean settled prefix of
    the newest block reaches the threshold, and the real-active block advances by the fewest tokens
    any row committed (a row ahead of it feeds a few drafts more than its own blocks need).
    """

    def __init__(self, shape: MultiBlock, drafts: int) -> None:
        self.shape = shape
        self.drafts = min(drafts, shape.max_drafts)
        self.restart()

    def restart(self) -> None:
        """A new generation: one block, nothing of it committed."""
        self.active = 1
        self.left = self.shape.block  # drafts of the real-active block not yet committed
        self.fed = 0

    def choose(self, source: Tensor, novel: Tensor) -> int:
        self.fed = min(self.left + (self.active - 1) * self.shape.block, self.drafts)
        return self.fed

    def observe(self, source: Tensor, matched: Tensor, fed: int) -> None:
        pass  # all it needs comes with settle()

    def settle(self, agree: Tensor, accepted: Tensor) -> None:
        """Learn from a pass: ``agree`` (A, fed) whether each draft fed equals the model's prediction from the
        drafts before it, ``accepted`` (A,) the drafts each row accepted (it then committed one more)."""
        n = self.shape.block
        newest = self.left + (self.active - 2) * n  # first slot of the newest block (the real-active's: its own)
        if self.active == 1:  # its committed tokens, this pass's included
            settled = min(n - self.left + accepted.double().mean().item() + 1, n)
        else:
            region = agree[:, newest : newest + n].long()
            settled = region.cumprod(1).sum(1).double().mean().item() if region.shape[1] else 0.0
        self.left -= int(accepted.min()) + 1
        while self.left <= 0:  # the real-active block is committed: the next one takes its place
            if self.active == 1:
                settled = 0.0  # the newest block is a fresh one
            self.left += n
            self.active = max(self.active - 1, 1)
        if settled >= self.shape.spawn_slots and self.active < self.shape.blocks:
            self.active += 1


def agreement(drafts: Tensor, outputs: Tensor) -> Tensor:
    """(B, D) whether each of ``drafts`` (B, D) equals the greedy prediction before it: ``outputs`` (B, W)
    holds the argmax at every window slot (slot 0 predicts the first draft)."""
    return drafts == outputs[:, : drafts.shape[1]]


__all__ = ["MultiBlock", "MultiBlockWidth", "agreement"]
