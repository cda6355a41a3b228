"""Measure what a pass of ``k`` tokens and ``B`` rows costs a model on this device (``jacobix calibrate``).

:func:`calibrate` lives beside :func:`~jacobix.tokens.generate.generate` (a first ``window="auto"``
run calls it); this module adds the helpers the command line and the demo use."""

from __future__ import annotations

from jacobix.models.protocol import CausalLM
from jacobix.tokens.generate import DEFAULT_BATCH_SIZES, calibrate
from jacobix.tokens.prompts import model_device, model_dtype
from jacobix.tokens.width.calibration import cached, covers, remember, where_of
from jacobix.tokens.width.costs import CostBook


def pass_cost(model: CausalLM, width: int, rows: int = 1) -> float:
    """What a ``width``-token pass of ``rows`` rows costs over a one-token pass on this device: from
    the cached calibration of the model and device, measured (and cached) first if there is none."""
    where = where_of(model, model_device(model), model_dtype(model))
    calibration = cached(where)
    if calibration is None or not covers(calibration, rows):
        calibration = remember(CostBook(), where, calibrate(model, batch_sizes=(rows,), rounds=3, passes=6))
    return calibration.ratio(rows, width)


def why_slower(width: int, cost: float, tokens_per_pass: float) -> str:
    """One line on why a parallel row lost to sequential decoding in wall time."""
    return (f"slower here: a {width}-token pass costs {cost:.2f}x a one-token pass on this device, so parallel decoding "
            f"pays from {cost:.2f} tokens per pass and this row commits {tokens_per_pass:.2f}; use a distilled student, "
            "the n-gram pool (lookahead) or a GPU")


__all__ = ["DEFAULT_BATCH_SIZES", "calibrate", "pass_cost", "why_slower"]
