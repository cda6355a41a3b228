"""Measure what a pass of ``k`` tokens and ``B`` rows costs a model on this device (``jacobix calibrate``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from jacobix.models.protocol import CausalLM
from jacobix.tokens.decoding import Decoding
from jacobix.tokens.generate import generate
from jacobix.tokens.prompts import model_device, model_dtype
from jacobix.tokens.width.calibration import Calibration, where_of
from jacobix.tokens.width.costs import CostBook

DEFAULT_BATCH_SIZES = (1, 4, 16, 64)


def calibrate(model: CausalLM, *, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, context: int = 64,
              rounds: int = 9, seed: int = 0) -> Calibration:
    """Time real decoding passes of every width against the one-token pass, for each batch size.

    Each batch size runs one short greedy generation whose start-up probe does the timing: an
    untimed round of every width (first calls pay for allocations), then ``rounds`` interleaved
    rounds, each width timed against the one-token pass of the same round, so a machine whose
    speed drifts still gives the right ratios; the median over rounds keeps out the rounds a busy
    neighbour slowed.

    Args:
        model: the model to measure (its device and dtype are the calibration's).
        batch_sizes: rows per pass to measure (prompts; double them for classifier-free guidance).
        context: prompt tokens before the timed passes.
        rounds: interleaved timing rounds per batch size.
        seed: the random prompts' seed.
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
        book = CostBook(cache=False, probe_rounds=rounds)
        prompts = torch.randint(0, model.vocab_size, (rows, context), generator=generator)
        generate(model, prompts, Decoding(method="jacobi", window="auto", init="repeat", costs=book), max_new_tokens=4)
        (table,) = book.tables.values()
        costs[rows] = {w: float(table.shape(w)) for w in sorted(table.shapes)}
        seconds[rows] = float(table.level())
    return Calibration(where_of(model, model_device(model), model_dtype(model)), costs, seconds)


__all__ = ["DEFAULT_BATCH_SIZES", "calibrate"]
