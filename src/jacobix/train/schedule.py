"""Learning-rate schedules, written once: pure functions of the step, and the frozen specs that carry them.

Every trainer's rate comes from here through :func:`jacobix.train.loop.fit`: linear warm-up and
cosine decay (nanoGPT's ``get_lr``) for the transformers and flows, and PyTorch's one-cycle
policy for the classifier (kept so its bundled checkpoint reproduces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rates:
    """What the optimizer uses at one step.

    Attributes:
        lr: the learning rate.
        beta1: Adam's first-moment decay, or None to leave it as configured.
    """

    lr: float
    beta1: float | None = None


def warmup_cosine(step: int, *, peak: float, warmup: int, steps: int) -> float:
    """The learning rate at ``step`` (0-based): linear warm-up to ``peak``, then cosine decay to 0.

    ``lr = peak * min(1, (step + 1) / warmup) * (1 + cos(pi * step / steps)) / 2``; the warm-up and
    the decay overlap (the decay starts at step 0), as in every jacobix trainer since the first.
    A warm-up of 0 counts as 1 (full rate from step 0).

    Args:
        step: optimizer steps taken before this one.
        peak: the largest rate.
        warmup: steps of linear warm-up.
        steps: the run's length (the cosine reaches 0 at ``step == steps``).
    Returns:
        the learning rate.
    """
    return peak * min(1.0, (step + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * step / steps))


def one_cycle(step: int, *, peak: float, steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4, momentum: tuple[float, float] = (0.85, 0.95)) -> tuple[float, float]:
    """The learning rate and beta1 of ``torch.optim.lr_scheduler.OneCycleLR`` (two phases, cosine) at ``step``.

    The rate rises from ``peak / div_factor`` to ``peak`` over ``pct_start`` of the run, then falls
    to ``peak / div_factor / final_div_factor``; beta1 moves the opposite way between the two
    ``momentum`` values. The arithmetic follows PyTorch's step for step, so the floats are equal.

    Args:
        step: optimizer steps taken before this one (0 .. steps - 1).
        peak: the largest rate (``max_lr``).
        steps: the run's length (``total_steps``).
        pct_start, div_factor, final_div_factor: PyTorch's defaults.
        momentum: (base, max) beta1.
    Returns:
        (learning rate, beta1).
    """
    initial = peak / div_factor
    phases = ((float(pct_start * steps) - 1, initial, peak, momentum[1], momentum[0]),
              (steps - 1, peak, initial / final_div_factor, momentum[0], momentum[1]))
    start = 0.0
    for index, (end, lr_from, lr_to, beta_from, beta_to) in enumerate(phases):
        if step <= end or index == len(phases) - 1:
            pct = (step - start) / (end - start)
            return _cosine(lr_from, lr_to, pct), _cosine(beta_from, beta_to, pct)
        start = end
    raise AssertionError("unreachable")  # pragma: no cover - the last phase always returns


def _cosine(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


@dataclass(frozen=True, kw_only=True)
class WarmupCosine:
    """Linear warm-up and cosine decay (:func:`warmup_cosine`) over ``steps``."""

    peak: float
    steps: int
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or not 0 < self.peak < math.inf or self.warmup < 0:
            raise ValueError(f"WarmupCosine needs steps >= 1, peak > 0 and warmup >= 0, got {self}")

    def __call__(self, step: int) -> Rates:
        return Rates(lr=warmup_cosine(step, peak=self.peak, warmup=self.warmup, steps=self.steps))


@dataclass(frozen=True, kw_only=True)
class OneCycle:
    """PyTorch's one-cycle policy (:func:`one_cycle`) over ``steps``, beta1 included."""

    peak: float
    steps: int

    def __post_init__(self) -> None:
        if self.steps < 2 or not 0 < self.peak < math.inf:
            raise ValueError(f"OneCycle needs steps >= 2 and peak > 0, got {self}")

    def __call__(self, step: int) -> Rates:
        lr, beta1 = one_cycle(step, peak=self.peak, steps=self.steps)
        return Rates(lr=lr, beta1=beta1)


Schedule = WarmupCosine | OneCycle

__all__ = ["OneCycle", "Rates", "Schedule", "WarmupCosine", "one_cycle", "warmup_cosine"]
