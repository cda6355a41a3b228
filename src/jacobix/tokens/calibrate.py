"""Measure what a pass of ``k`` tokens and ``B`` rows costs a model on this device (``jacobix calibrate``)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from jacobix.models.protocol import CausalLM
from jacobix.tokens.decoding import Decoding
from jacobix.tokens.generate import generate
from jacobix.tokens.prompts import model_device, model_dtype
from jacobix.tokens.width.calibration import Calibration, where_of
from jacobix.tokens.width.costs import PROBE_WIDTHS
from jacobix.tokens.width.policy import FixedWidth

DEFAULT_BATCH_SIZES = (1, 4, 16, 64)


def calibrate(model: CausalLM, *, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, context: int = 64,
              rounds: int = 5, seed: int = 0, passes: int = 12) -> Calibration:
    """Time whole decoding passes of every width against the one-token pass, for each batch size.

    A pass is timed as ``window="auto"`` runs it: a short greedy generation whose width policy
    feeds ``k - 1`` drafts every pass, its wall time over its passes (proposal, forward, rule,
    redraft and the engine's bookkeeping). After an untimed round (first calls pay for
    allocations), ``rounds`` interleaved rounds time every width against the one-token run of the
    same round, so a machine whose speed drifts still gives the right ratios; the median over
    rounds keeps out the rounds a busy neighbour slowed.

    Args:
        model: the model to measure (its device and dtype are the calibration's).
        batch_sizes: rows per pass to measure (prompts; double them for classifier-free guidance).
        context: prompt tokens before the timed passes.
        rounds: interleaved timing rounds per batch size (at least 3).
        seed: the random prompts' seed.
        passes: passes per timed run.
    Returns:
        A :class:`~jacobix.tokens.width.calibration.Calibration`; ``.save(path)`` writes it.
    """
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be whole numbers >= 1, got {batch_sizes!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 3:
        raise ValueError(f"rounds must be an int >= 3 (medians need a few), got {rounds!r}")
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be an int >= 1 (prompt tokens), got {context!r}")
    generator = torch.Generator().manual_seed(seed)
    costs, seconds = {}, {}
    for rows in sorted(set(batch_sizes)):
        prompts = torch.randint(0, model.vocab_size, (rows, context), generator=generator).to(model_device(model))
        specs = {w: Decoding(method="jacobi", window=PROBE_WIDTHS[-1], init="repeat", width_policy=FixedWidth(w - 1))
                 for w in PROBE_WIDTHS}
        timings: dict[int, list[float]] = {w: [] for w in PROBE_WIDTHS}
        for round_ in range(rounds + 1):
            per_pass = {w: _seconds_per_pass(model, prompts, spec, passes) for w, spec in specs.items()}
            if round_:  # the first round only warms up
                for w in PROBE_WIDTHS:
                    timings[w].append(per_pass[w] / per_pass[1])
                seconds.setdefault(rows, []).append(per_pass[1])
        costs[rows] = _monotone({w: statistics.median(t) for w, t in timings.items()})
        seconds[rows] = statistics.median(seconds[rows])
    return Calibration(where_of(model, model_device(model), model_dtype(model)), costs, seconds)


def _seconds_per_pass(model: CausalLM, prompts: torch.Tensor, decoding: Decoding, passes: int) -> float:
    stats = generate(model, prompts, decoding, max_new_tokens=passes + 1).stats
    return stats.wall_time_s / max(stats.forward_passes, 1)


def _monotone(shape: dict[int, float]) -> dict[int, float]:
    """Costs never below a narrower width's, and the one-token pass exactly 1."""
    out, floor = {}, 1.0
    for width in sorted(shape):
        floor = max(floor, shape[width]) if width > 1 else 1.0
        out[width] = floor
    return out


def pass_cost(model: CausalLM, width: int, rows: int = 1) -> float:
    """What a ``width``-token pass of ``rows`` rows costs over a one-token pass on this device: from
    the cached calibration of the model and device, measured (and cached) first if there is none."""
    from jacobix.tokens.width.calibration import cache_path, cached

    where = where_of(model, model_device(model), model_dtype(model))
    calibration = cached(where)
    if calibration is None or not any(r / 1.5 <= rows <= r * 1.5 for r in calibration.costs):
        measured = calibrate(model, batch_sizes=(rows,), rounds=3)
        costs = {**(calibration.costs if calibration else {}), **measured.costs}
        seconds = {**(calibration.seconds if calibration else {}), **measured.seconds}
        calibration = Calibration(where, costs, seconds)
        calibration.save(cache_path(where))
    return calibration.ratio(rows, width)


def why_slower(width: int, cost: float, tokens_per_pass: float) -> str:
    """One line on why a parallel row lost to sequential decoding in wall time."""
    return (f"slower here: a {width}-token pass costs {cost:.2f}x a one-token pass on this device, so parallel decoding "
            f"pays from {cost:.2f} tokens per pass and this row commits {tokens_per_pass:.2f}; use a distilled student, "
            "the n-gram pool (lookahead) or a GPU")


__all__ = ["DEFAULT_BATCH_SIZES", "calibrate", "pass_cost", "why_slower"]
