"""LOSSY relaxed convergence tests for early-exit decoding (CEED-VLA).

Exact Jacobi commits a draft when the model's output at its position equals it. CEED-VLA's
early exit stops iterating sooner: when tokens that stand for bins of an ordered value (action
tokens) moved by at most a few bins between sweeps, the window is committed as it stands. The
output then differs from greedy decoding wherever a token had not yet converged; every such token
is counted in ``DecodeStats.lossy_per_pass``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BinTolerance:
    """LOSSY: a draft is settled when it equals the new output, or both are bin tokens at most
    ``max_moved`` bins apart.

    Bin tokens are ``first .. first + count - 1`` in the order of the values they stand for (token
    ``first + i`` is bin ``i``). Any other token (an end token, text) must match exactly.

    Args:
        first: the first bin token.
        count: number of bin tokens.
        max_moved: bins a token may still move between sweeps and count as settled; 0 is the exact
            test on bin tokens.
    """

    first: int
    count: int
    max_moved: int

    def __post_init__(self) -> None:
        for name in ("first", "count", "max_moved"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "count" else 0):
                raise ValueError(f"BinTolerance.{name} must be an int >= {1 if name == 'count' else 0}, got {value!r}")

    def __call__(self, old: Tensor, new: Tensor) -> Tensor:
        """(B, D) True where draft ``old`` (B, D) counts as settled given the sweep's output ``new`` (B, D)."""
        in_range = (old >= self.first) & (old < self.first + self.count) & (new >= self.first) & (new < self.first + self.count)
        close = in_range & ((old - new).abs() <= self.max_moved)
        return close | torch.eq(old, new)


__all__ = ["BinTolerance"]
