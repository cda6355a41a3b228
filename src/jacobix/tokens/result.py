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
        fed_per_pass: (P,) drafts fed to each candidate row by each pass (the width policy's choice).
        wall_time_s: seconds, prefill included.
        schedule: passes per width, pass costs and drafts per source (:class:`ScheduleStats`).
        branch_per_pass: (P, B) drafts accepted on a draft tree's branches (``Decoding.tree``; the
            trunk's are the rest of ``accepted_per_pass``), or None without a tree.
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
    fed_per_pass: Tensor
    wall_time_s: float
    schedule: ScheduleStats | None = None
    branch_per_pass: Tensor | None = None

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

    def _drafted(self) -> Tensor:
        """(P, B) True for passes of active rows that tested drafts (vLLM counts only those)."""
        return self.active_per_pass & (self.fed_per_pass[:, None] > 0)

    @property
    def num_drafts(self) -> int:
        """vLLM's ``num_drafts``: (pass, row) pairs that tested at least one draft."""
        return int(self._drafted().sum())

    @property
    def num_draft_tokens(self) -> int:
        """vLLM's ``num_draft_tokens``: drafts tested, summed over passes and rows."""
        return int((self.fed_per_pass[:, None] * self._drafted()).sum())

    @property
    def num_accepted_tokens(self) -> int:
        """vLLM's ``num_accepted_tokens``: drafts accepted (bonus and recovered tokens not counted)."""
        return int((self.accepted_per_pass * self._drafted()).sum())

    @property
    def draft_acceptance_length(self) -> float:
        """vLLM's mean acceptance length, ``1 + num_accepted_tokens / num_drafts`` (passes with no
        drafts left out; compare ``mean_acceptance_length``, which counts every pass)."""
        return 1.0 + self.num_accepted_tokens / max(self.num_drafts, 1)

    @property
    def acceptance_rate_per_position(self) -> Tensor:
        """(D,) vLLM's per-position rate: drafts accepted at slot ``i`` over ``num_drafts``
        (unconditional; ``position_acceptance`` is the rate among passes that tested slot ``i``)."""
        drafted = self._drafted()
        slots = torch.arange(self.window - 1)[:, None, None]  # (D, 1, 1)
        return ((self.accepted_per_pass[None] > slots) & drafted[None]).sum((1, 2)) / max(self.num_drafts, 1)

    def per_row(self) -> list[dict[str, int]]:
        """Per batch row: new tokens, passes while active, drafts tested, and drafts accepted and committed.

        A row's last pass may accept drafts past its last token (at positions whose values depend
        on the batch's cache size); only the committed ones count, ``min(accepted, committed - 1)``
        per pass (a pass also commits its one sure token), so a row's stats do not depend on its batch.
        """
        drafted = self._drafted()  # (P, B)
        kept = torch.minimum(self.accepted_per_pass, (self.committed_per_pass - 1).clamp_min(0))  # (P, B)
        return [
            {"new_tokens": self.new_tokens[b], "forward_passes": int(self.active_per_pass[:, b].sum()),
             "draft_tokens": int((self.fed_per_pass * drafted[:, b]).sum()),
             "accepted_tokens": int((kept[:, b] * drafted[:, b]).sum())}
            for b in range(len(self.new_tokens))
        ]

    def summary(self) -> dict[str, float | int | str | bool]:
        return {
            "method": self.method,
            "window": f"auto (1-{self.window})" if self.adaptive else self.window,
            "forward_passes": self.forward_passes,
            "new_tokens": sum(self.new_tokens),
            "tokens_per_pass": round(self.tokens_per_pass, 3),
            "mean_acceptance_length": round(self.mean_acceptance_length, 3),
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "draft_acceptance_length": round(self.draft_acceptance_length, 3),
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
