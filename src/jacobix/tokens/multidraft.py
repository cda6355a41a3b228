"""Several n-gram candidates verified per pass ("batched verify" of ALGORITHMS.md section 4), greedy.

Lookahead decoding verifies many pool continuations at once. Here the ``r`` candidate draft
sequences of an engine row run as ``r`` rows of the model batch that share the row's committed
prefix; the pass commits the candidate with the longest exact-match prefix (ties: the lowest
index), so the output is still exactly greedy AR. The position-indexed caches make the sibling
rows cheap: they differ only in the slots of the last window, so after each pass the winner's
newly committed slots are copied to every other row (:func:`copy_slots`).

A cache is kept per candidate count in ``rows`` (e.g. 1, 2, 4 rows per engine row) so that the
:class:`GridController` can choose, pass by pass, both how many candidates and how many drafts
to evaluate from the measured cost of a ``rows x width`` pass (a 4-row pass is not free on a
CPU) and the acceptance observed per draft source and candidate rank.

Worked example, 2 candidates, committed ``... x9``::

    row 0 (cand 0)  x9 a b c    targets a b d e   -> 2 drafts match
    row 1 (cand 1)  x9 a f g    targets a b h i   -> 1 draft matches
    winner 0: commit a b d; slots 10, 11 of row 0 are copied to row 1 (and to the other caches)
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from jacobix.core.acceptance import leading_true
from jacobix.tokens.policy.adaptive import AdaptiveConfig, WindowController, interpolate
from jacobix.core.timing import clock


def greedy_winner(drafts: Tensor, target_tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Longest exact-match candidate of each row (greedy Jacobi over a set of candidates).

    Args:
        drafts: (B, R, D) candidate drafts per row.
        target_tokens: (B, R, D+1) argmax of the model after the prefix and each candidate.
    Returns:
        winner: (B,) candidate index (the lowest among equally long matches).
        matched: (B, R) accepted drafts of every candidate.
    """
    matched = leading_true(drafts == target_tokens[..., :-1])  # (B, R)
    best = matched.max(dim=1, keepdim=True).values
    winner = (matched == best).long().argmax(dim=1)  # first maximum
    return winner, matched


def copy_slots(target, source, source_rows: Tensor, positions: Tensor) -> None:
    """Row ``i`` of cache ``target`` takes row ``source_rows[i]`` of ``source`` at ``positions[i]`` (R, P).

    Works for :class:`jacobix.core.cache.KVCache` and the transformers adapter's cache; any other cache
    is refused (its slots are not addressed by absolute position).
    """
    if hasattr(target, "copy_slots_from"):
        target.copy_slots_from(source, source_rows, positions)
        return
    keys, values = getattr(target, "keys", None), getattr(target, "values", None)
    if not isinstance(keys, Tensor) or keys.dim() != 5:
        raise ValueError(f"{type(target).__name__} is not a position-indexed cache; multi-candidate lookahead needs "
                         "jacobix.core.cache.KVCache or the transformers adapter's cache")
    for buffer, origin in ((keys, source.keys), (values, source.values)):  # (L, B, H, C, hd)
        taken = origin.permute(1, 3, 0, 2, 4)[source_rows[:, None], positions]  # (R, P, L, H, hd)
        buffer.permute(1, 3, 0, 2, 4)[torch.arange(len(source_rows))[:, None], positions] = taken


class GridController(WindowController):
    """Chooses candidates per row and drafts per pass from pass costs measured per ``rows x width``.

    Expected commits of ``r`` candidates fed ``w`` drafts: ``1 + sum_{t<=w} P(some candidate
    matches t drafts)``; candidates with distinct ``t``-prefixes match disjointly, so that
    probability is the sum over the first candidate of each distinct prefix of the product of its
    slots' rates (rates per source and slot, as in :class:`WindowController`).
    """

    def __init__(self, costs: dict[tuple[int, int], float], drafts: int, rows: tuple[int, ...],
                 config: AdaptiveConfig, keys: int = 1) -> None:
        super().__init__({w: c for (r, w), c in costs.items() if r == 1}, drafts, config, keys, ranks=2)
        self.rows = rows
        per_rows = {r: {w: c for (q, w), c in costs.items() if q == r} for r in rows}
        self.grid = torch.tensor([[interpolate(per_rows[r], k + 1) for k in range(drafts + 1)] for r in rows])  # (N, D+1)

    def choose_grid(self, sources: Tensor, novel: Tensor) -> tuple[int, int]:
        """(candidates, drafts) for active rows' sources (A, R, D) and novelty flags (A, R, D)."""
        if self.drafts == 0 or sources.shape[0] == 0:
            return 1, 0
        weight = self.config.prior_weight
        rate = (self.passed + weight * self.prior) / (self.tested + weight)  # (S, D)
        slot_rate = rate[sources, torch.arange(self.drafts)]  # (A, R, D)
        reach = slot_rate.cumprod(-1) * novel  # (A, R, D) P(candidate matches t+1 drafts), distinct prefixes only
        best_speed, choice = -1.0, (1, 0)
        for i, r in enumerate(self.rows):
            at_least = reach[:, :r].sum(1).clamp(max=1.0)  # (A, D)
            expected = 1 + torch.cat([torch.zeros(at_least.shape[0], 1), at_least.cumsum(1)], 1)  # (A, D+1)
            speed = expected.sum(0) / self.grid[i]  # (D+1,)
            if float(speed.max()) > best_speed:
                best_speed, choice = float(speed.max()), (r, int(speed.argmax()))
        return choice


@torch.inference_mode()
def measure_grid(model, rows: tuple[int, ...], widths: tuple[int, ...], repeats: int,
                 device: torch.device) -> dict[tuple[int, int], float]:
    """Seconds of one pass of ``rows`` rows and ``width`` tokens after a 64-token context (min of ``repeats``)."""
    context, most = 64, max(rows)
    tokens = torch.randint(model.vocab_size, (1, context + max(widths)), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device).expand(most, -1)
    costs: dict[tuple[int, int], float] = {}
    for r in rows:
        cache = model.new_cache(r, context + max(widths) + 1)
        model.forward(tokens[:r, :context], torch.arange(context, device=device).expand(r, -1), cache)
        for _ in range(repeats):
            for w in widths:
                positions = (context + torch.arange(w, device=device)).expand(r, -1)  # (r, w)
                start = clock(device)
                model.forward(tokens[:r, context : context + w], positions, cache)
                costs[r, w] = min(costs.get((r, w), float("inf")), clock(device) - start)
    return costs


_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_grid(model, rows: tuple[int, ...], config: AdaptiveConfig, device: torch.device,
                dtype: torch.dtype) -> dict[tuple[int, int], float]:
    """:func:`measure_grid` once per underlying model object, device, dtype and grid."""
    per_model = _MEASURED.setdefault(getattr(model, "model", model), {})
    key = (str(device), str(dtype), rows, config.probe_widths)
    if key not in per_model:
        per_model[key] = measure_grid(model, rows, config.probe_widths, config.repeats, device)
    return per_model[key]


def row_options(candidates: int) -> tuple[int, ...]:
    """Candidate counts with a cache of their own: powers of two below ``candidates``, and it."""
    options = [1]
    while options[-1] * 2 < candidates:
        options.append(options[-1] * 2)
    return tuple(sorted(set(options + [candidates])))


__all__ = ["GridController", "cached_grid", "copy_slots", "greedy_winner", "measure_grid", "row_options"]
