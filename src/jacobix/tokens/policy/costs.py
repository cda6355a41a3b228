"""What a pass of the model costs, by window width, measured on the passes actually run.

One start-up timing is fragile on a loaded machine (on 2 shared cores one run measured a
2-token pass at 0.18x a 1-token pass, another at 9.5x). :class:`PassCosts` instead keeps the
recent timings of each width and answers with their median: a short probe seeds every width
(a discarded warm-up round, then a few interleaved rounds on the real cache, so any context
length fits and the batch is the real one), and every pass of a generation adds its own timing.
Both time the same work, the part of a pass that grows with its width: the proposal, the
verifier's forward, target distributions and acceptance rule (SJD's per-pass sampling work) and
the redraft. The engine's own commit and rollback cost the same at every width and are left
out, which errs toward narrower windows.
"""

from __future__ import annotations

import statistics
import weakref
from collections import deque
from collections.abc import Callable

from jacobix.core.timing import clock

PROBE_WIDTHS = (1, 2, 4, 8, 16)


class PassCosts:
    """Recent seconds per pass, by width (tokens per row per pass).

    Args:
        keep: timings kept per width (the median of these is the estimate).
        probe_rounds: rounds of the start-up probe over the probe widths.
    """

    def __init__(self, keep: int = 31, probe_rounds: int = 3) -> None:
        if keep < 1 or probe_rounds < 1:
            raise ValueError(f"PassCosts: keep and probe_rounds must be >= 1, got {keep}, {probe_rounds}")
        self.keep, self.probe_rounds = keep, probe_rounds
        self.samples: dict[int, deque[float]] = {}

    def add(self, width: int, seconds: float) -> None:
        """Record one pass of ``width`` tokens that took ``seconds``."""
        self.samples.setdefault(width, deque(maxlen=self.keep)).append(seconds)

    def needs_probe(self, widths: tuple[int, ...]) -> bool:
        return any(len(self.samples.get(w, ())) < self.probe_rounds for w in widths)

    def probe(self, run_pass: Callable[[int], None], widths: tuple[int, ...], device=None) -> None:
        """Time ``run_pass(width)`` for each width, rounds interleaved so that load hits all alike
        (after one untimed round: first calls pay for allocations)."""
        for width in widths:
            run_pass(width)
        for _ in range(self.probe_rounds):
            for width in widths:
                start = clock(device)
                run_pass(width)
                self.add(width, clock(device) - start)

    def estimate(self, width: int) -> float:
        """Median seconds of a ``width`` pass; other widths are interpolated between measured ones
        (linearly; past the largest, in proportion to the width). Never below a narrower width's."""
        return self.table(width)[-1]

    def table(self, most: int) -> list[float]:
        """Estimated seconds of widths ``1 .. most`` (one median per measured width)."""
        median = {w: statistics.median(s) for w, s in sorted(self.samples.items()) if s}
        if not median:
            raise ValueError("PassCosts has no timings yet: probe or add passes first")
        known = list(median)
        table, floor = [], 0.0
        for width in range(1, most + 1):
            upper = next((w for w in known if w >= width), None)
            lower = next((w for w in reversed(known) if w <= width), None)
            if upper is None:
                cost = median[known[-1]] * width / known[-1]
            elif lower is None or lower == upper:
                cost = median[upper]
            else:
                t = (width - lower) / (upper - lower)
                cost = median[lower] * (1 - t) + median[upper] * t
            floor = max(floor, cost)
            table.append(floor)
        return table

    def ratios(self, widths: tuple[int, ...]) -> dict[int, float]:
        """Estimated cost of each width over a one-token pass."""
        base = self.estimate(1)
        return {w: self.estimate(w) / base for w in widths}


_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shared_costs(model: object, key: tuple) -> PassCosts:
    """The :class:`PassCosts` of ``model`` (its wrapped module for an adapter) for ``key``
    (device, dtype, rows per pass, greedy or not, proposer), shared by the generations of one process so that their
    timings pool; pass ``AdaptiveWidth(costs=...)`` to keep your own."""
    owner = getattr(model, "model", model)
    return _SHARED.setdefault(owner, {}).setdefault(key, PassCosts())


__all__ = ["PROBE_WIDTHS", "PassCosts", "shared_costs"]
