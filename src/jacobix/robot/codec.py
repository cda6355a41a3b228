"""Uniform bins for continuous actions and observations (tokens of a robot policy).

A value ``x`` in ``[low, high]`` falls in bin ``floor((x - low) / width)`` (the top edge goes to
the last bin) and decodes to that bin's centre, so a round trip moves it by at most half a bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray | list | tuple | float


def _as_float_tensor(values: ArrayLike) -> Tensor:
    if isinstance(values, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    return torch.as_tensor(values, dtype=torch.float32)


@dataclass(frozen=True)
class ActionCodec:
    """Actions in ``[low, high]`` (every dimension) <-> bin indices ``[0, bins)``.

    Args:
        bins: number of bins.
        low, high: the action range (Meta-World: [-1, 1]).
    """

    bins: int = 256
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.bins < 2:
            raise ValueError(f"ActionCodec.bins must be >= 2, got {self.bins}")
        if not self.high > self.low:
            raise ValueError(f"ActionCodec needs high > low, got low={self.low}, high={self.high}")

    @property
    def width(self) -> float:
        """Width of one bin, in action units."""
        return (self.high - self.low) / self.bins

    def encode(self, actions: ArrayLike) -> Tensor:
        """Bin indices (LongTensor, same shape) of ``actions``.

        Raises:
            ValueError: an action outside ``[low, high]`` or not finite (clip actions first).
        """
        actions = _as_float_tensor(actions)
        bad = ~torch.isfinite(actions) | (actions < self.low) | (actions > self.high)
        if bad.any():
            worst = actions[bad].flatten()[0].item()
            raise ValueError(
                f"actions must lie in [{self.low}, {self.high}] (ActionCodec range); got {worst} "
                f"({int(bad.sum())} value(s) outside); clip them first"
            )
        scaled = (actions - self.low) / self.width  # in [0, bins]
        return scaled.floor().long().clamp_(0, self.bins - 1)

    def decode(self, bins: Tensor) -> Tensor:
        """Bin centres (FloatTensor, same shape) of bin indices in ``[0, bins)``."""
        bins = torch.as_tensor(bins)
        if bins.numel() and (int(bins.min()) < 0 or int(bins.max()) >= self.bins):
            raise ValueError(f"bins must lie in [0, {self.bins}), got values in [{int(bins.min())}, {int(bins.max())}]")
        return self.low + (bins.float() + 0.5) * self.width


@dataclass(frozen=True)
class ObservationCodec:
    """Observations (..., D) <-> per-dimension bins (..., D) over fitted ranges, clamped at the ends.

    Args:
        low, high: per-dimension ranges (length D each); a dimension whose data never varies
            still gets a range of positive width (see :meth:`fit`).
        bins: bins per dimension.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    bins: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", tuple(float(v) for v in self.low))
        object.__setattr__(self, "high", tuple(float(v) for v in self.high))
        if self.bins < 2:
            raise ValueError(f"ObservationCodec.bins must be >= 2, got {self.bins}")
        if len(self.low) != len(self.high) or not self.low:
            raise ValueError(f"ObservationCodec needs low and high of one non-zero length, got {len(self.low)} and {len(self.high)}")
        if not all(h > lo for lo, h in zip(self.low, self.high)):
            raise ValueError("ObservationCodec needs high > low in every dimension")

    @property
    def dim(self) -> int:
        """Observation size D."""
        return len(self.low)

    @classmethod
    def fit(cls, observations: ArrayLike, *, bins: int = 64, margin: float = 0.02, min_width: float = 1e-3) -> "ObservationCodec":
        """Per-dimension ranges of ``observations`` (N, D), widened by ``margin`` of the range each side.

        Args:
            observations: (N, D) observations (e.g. all states of the demonstrations).
            bins: bins per dimension.
            margin: fraction of each range added at both ends, for states slightly outside the data.
            min_width: smallest range (for dimensions that never change).
        """
        data = _as_float_tensor(observations).double()
        if data.dim() != 2 or data.shape[0] == 0:
            raise ValueError(f"observations must be a non-empty (N, D) array, got shape {tuple(data.shape)}")
        low, high = data.min(0).values, data.max(0).values  # (D,)
        pad = (high - low) * margin  # (D,)
        narrow = (high - low + 2 * pad) < min_width
        pad = torch.where(narrow, (min_width - (high - low)) / 2, pad)
        return cls(tuple((low - pad).tolist()), tuple((high + pad).tolist()), bins)

    def encode(self, observations: ArrayLike) -> Tensor:
        """Bin indices (..., D) of observations (..., D), clamped into ``[0, bins)``.

        Raises:
            ValueError: the last dimension is not D, or a value is NaN or infinite (a sensor fault
                would otherwise read as the lowest bin).
        """
        obs = _as_float_tensor(observations)
        if obs.dim() == 0 or obs.shape[-1] != self.dim:
            raise ValueError(f"observations must have {self.dim} values in the last dimension, got shape {tuple(obs.shape)}")
        if not bool(torch.isfinite(obs).all()):
            raise ValueError(f"observations must be finite; {int((~torch.isfinite(obs)).sum())} value(s) are NaN or infinite")
        low, high = torch.tensor(self.low), torch.tensor(self.high)  # (D,)
        scaled = (obs - low) / (high - low) * self.bins  # (..., D)
        return scaled.floor().clamp_(0, self.bins - 1).long()

    def decode(self, bins: Tensor) -> Tensor:
        """Bin centres (..., D) of bin indices (..., D)."""
        low, high = torch.tensor(self.low), torch.tensor(self.high)
        return low + (torch.as_tensor(bins).float() + 0.5) * (high - low) / self.bins
