"""Pure tensor functions that turn logits into target distributions and draw from them.

Every function takes a whole window at once: logits (B, W, V) with one row per window position.
The same :func:`target_probs` is applied to every position of every pass, so the target, draft
and residual distributions of speculative decoding are all formed by identical processing.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Protocol, Sequence

import torch
from torch import Tensor


class LogitsProcessor(Protocol):
    """Edits logits of a window, knowing each position's index among the generated tokens.

    ``new_positions[b, i]`` is the index of the token that ``logits[b, i]`` predicts, counted
    from the first generated token of row ``b`` (0-based). Image models use it to force
    end-of-row tokens at the right places; it must be a pure function of its inputs.
    """

    def __call__(self, logits: Tensor, new_positions: Tensor) -> Tensor: ...


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How logits become a target distribution, the same at every position of every pass.

    Attributes:
        temperature: 0 for greedy decoding; > 0 samples at this temperature (the sampling methods need it).
        top_k: sampling: keep the k most likely tokens (None keeps all).
        top_p: sampling: keep the smallest set of most likely tokens holding this much probability (None keeps all).
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, type(None))):
            raise ValueError(f"top_k must be an int >= 1 or None, got {self.top_k!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float, type(None))):
            raise ValueError(f"top_p must be a number in (0, 1] or None, got {self.top_p!r}")
        if not (self.temperature >= 0.0) or self.temperature == float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties at the k-th value are kept), mask the rest."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (nucleus)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # probability of strictly more likely tokens
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(
    logits: Tensor,
    new_positions: Tensor,
    config: SamplingConfig,
    processors: Sequence[LogitsProcessor] = (),
) -> Tensor:
    """Apply user processors, then temperature, top-k and top-p, to logits (B, W, V).

    Raises:
        ValueError: on NaN logits or when every token of some position is masked.
    """
    for processor in processors:
        logits = processor(logits, new_positions)
    if not config.greedy:
        logits = logits / config.temperature
    if config.top_k is not None:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None and config.top_p < 1.0:
        logits = top_p_filter(logits, config.top_p)
    check_logits(logits)
    return logits


def check_logits(logits: Tensor) -> None:
    """Fail loudly on NaN logits or a position where every token is masked (one device sync)."""
    best = logits.max(dim=-1).values  # (B, W); NaN if any logit is NaN, -inf if all are masked
    if not bool(torch.isfinite(best).all()):
        if bool(torch.isnan(logits).any()):
            raise ValueError("the model produced NaN logits; check the weights and the input dtype")
        raise ValueError(
            "every token was masked at some position (all logits -inf or +inf); "
            "check the logits processors, top_k/top_p, and the model output"
        )


def target_probs(logits: Tensor) -> Tensor:
    """Processed logits (B, W, V) to probabilities (B, W, V), computed in float32 or better."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.to(dtype).softmax(-1)


Randomness = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the batch, or one per batch row (dim 0 of every draw), or torch's global one."""


def sample(probs: Tensor, generator: Randomness) -> Tensor:
    """Draw one token per row of ``probs`` (..., V) by the exponential race; returns (...)."""
    race = exponential(probs.shape, probs, generator)
    return torch.argmax(probs / race, dim=-1)


def uniform(shape: tuple[int, ...], like: Tensor, generator: Randomness) -> Tensor:
    """Uniform numbers in [0, 1) of ``shape``, on ``like``'s device and dtype."""
    return per_row(lambda s, g: torch.rand(s, generator=g, device=like.device, dtype=like.dtype), shape, generator)


def exponential(shape: tuple[int, ...], like: Tensor, generator: Randomness) -> Tensor:
    """Standard exponential numbers of ``shape``, on ``like``'s device and dtype."""
    return per_row(lambda s, g: torch.empty(s, device=like.device, dtype=like.dtype).exponential_(generator=g),
                   shape, generator)


def randint(high: int, shape: tuple[int, ...], device: torch.device, generator: Randomness) -> Tensor:
    """Uniform integers in [0, high) of ``shape``."""
    return per_row(lambda s, g: torch.randint(high, s, generator=g, device=device), shape, generator)


def per_row(draw: Callable[[tuple[int, ...], torch.Generator | None], Tensor], shape: tuple[int, ...],
            generator: Randomness) -> Tensor:
    """``draw(shape, generator)``, or with one generator per row, row ``b`` drawn from ``generator[b]``
    (so a row's numbers do not depend on the batch it runs in)."""
    if generator is None or isinstance(generator, torch.Generator):
        return draw(tuple(shape), generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} rows: give one per row")
    return torch.stack([draw(tuple(shape[1:]), g) for g in generator])
