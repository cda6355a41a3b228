"""What a generation returns: tokens and exact statistics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from jacobix.core.engine import SweepRecord
from jacobix.tokens.problem import ScheduleStats


@dataclass(frozen=True)
class DecodeStats:
    """Exact counts and wall time of one :func:`~jacobix.tokens.generate.generate` call.

    Attributes:
        method: the method's name ("ar", "jacobi", "sjd", ...).
        window: most tokens evaluated per pass (1 for "ar").
        adaptive: True when the width policy chose the tokens per pass (``window="auto"``).
        forward_passes: decoding passes of the model. The prompt's prefill pass is not counted
            (``prefill_passes``); it also gives the first new token, as in transformers.
        prefill_passes: 1 when the prompt was prefilled, else 0.
        new_tokens: tokens generated per row.
        committed_per_pass: (P, B) tokens committed per pass and row.
        accepted_per_pass: (P, B) drafts accepted per pass and row.
        active_per_pass: (P, B) rows still generating during each pass.
        lossy_per_pass: (P, B) tokens committed unconverged by the LOSSY sweep cap (all zero when exact).
        wall_time_s: seconds, prefill included.
        schedule: passes per width, pass costs and drafts per source (:class:`ScheduleStats`).
    """

    method: str
    window: int
    adaptive: bool
    forward_passes: int
    prefill_passes: int
    new_tokens: list[int]
    committed_per_pass: Tensor
    accepted_per_pass: Tensor
    active_per_pass: Tensor
    lossy_per_pass: Tensor
    wall_time_s: float
    schedule: ScheduleStats | None = None

    @property
    def lossy(self) -> bool:
        """True when some token was committed by the lossy sweep cap."""
        return bool(self.lossy_per_pass.any())

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens committed per pass and active row (1 + accepted drafts per pass)."""
        return float(self.committed_per_pass.sum()) / max(int(self.active_per_pass.sum()), 1)

    @property
    def tokens_per_pass(self) -> float:
        """All rows' new tokens over forward passes."""
        return sum(self.new_tokens) / max(self.forward_passes, 1)

    @property
    def position_acceptance(self) -> Tensor:
        """(D,) rate at which draft ``i`` passed, among passes where it was tested."""
        accepted, active = self.accepted_per_pass, self.active_per_pass
        slots = torch.arange(self.window - 1)[:, None, None]  # (D, 1, 1)
        tested = (accepted[None] >= slots) & active[None]  # (D, P, B)
        passed = (accepted[None] > slots) & active[None]
        return passed.sum((1, 2)) / tested.sum((1, 2)).clamp_min(1)

    def summary(self) -> dict[str, float | int | str | bool]:
        return {
            "method": self.method,
            "window": f"auto (1-{self.window})" if self.adaptive else self.window,
            "forward_passes": self.forward_passes,
            "new_tokens": sum(self.new_tokens),
            "tokens_per_pass": round(self.tokens_per_pass, 3),
            "mean_acceptance_length": round(self.mean_acceptance_length, 3),
            "wall_time_s": round(self.wall_time_s, 4),
            **({"lossy_tokens": int(self.lossy_per_pass.sum())} if self.lossy else {}),
            **({"schedule": self.schedule.summary()} if self.schedule is not None else {}),
        }


@dataclass(frozen=True)
class GenerateResult:
    """Generated tokens per row (prompt excluded, EOS included) and the statistics."""

    tokens: list[Tensor]
    stats: DecodeStats
    trajectory: list[SweepRecord]


__all__ = ["DecodeStats", "GenerateResult"]
