"""What a pass of the model costs, by window width, measured on the passes actually run.

One start-up timing is fragile on a loaded machine (on 2 shared cores one run measured a
2-token pass at 0.18x a 1-token pass, another at 9.5x), and so is comparing timings of different
widths taken minutes apart: the machine's speed drifts by 10-30% in between. :class:`PassCosts`
therefore splits a pass's cost into the machine's current *level* (seconds of a one-token pass
now) and the *shape* of the width (cost relative to a one-token pass), and keeps both as medians
of recent samples:

- a probe seeds the shape: a discarded warm-up round, then interleaved rounds of real passes on
  the generation's own cache (any context length fits, the batch is the real one), each width
  timed against the one-token pass of the same round;
- every pass of a generation adds its timing: divided by the current level it refines its width's
  shape, divided by its width's shape it refines the level. Widths that alternate are compared
  within moments of each other; a width that runs alone only moves the level.

The adaptive width compares widths by shape only, so its choices do not follow the machine's
load. A generation's pass is timed from one sweep's start to the next (the proposal, the forward,
target distributions and acceptance rule, i.e. SJD's per-pass sampling work, the redraft and the
engine's bookkeeping); the engine syncs with the device once per sweep, so reading the clock
there adds no wait. A probe pass times the proposal, forward, rule and redraft.
"""

from __future__ import annotations

import json
import statistics
from collections import deque
from collections.abc import Callable
from pathlib import Path

from jacobix.core.timing import clock

PROBE_WIDTHS = (1, 2, 3, 4, 6, 8, 12, 16)  # the widths the adaptive policy chooses among
OUTLIER = 3.0  # a timing this many times off its width's median is a neighbour's burst, not the width
RECENT = 4  # passes over which another width must have run for a timing to refine its width's shape


class PassCosts:
    """Recent pass timings as a machine level times a per-width shape.

    Args:
        keep: samples kept per width shape and for the level (their medians are the estimates).
        probe_rounds: interleaved rounds of the start-up probe.
    """

    def __init__(self, keep: int = 31, probe_rounds: int = 5) -> None:
        if keep < 1 or probe_rounds < 1:
            raise ValueError(f"PassCosts: keep and probe_rounds must be >= 1, got {keep}, {probe_rounds}")
        self.keep, self.probe_rounds = keep, probe_rounds
        self.shapes: dict[int, deque[float]] = {1: deque([1.0], maxlen=keep)}
        self.levels: deque[float] = deque(maxlen=keep)
        self.recent: deque[int] = deque(maxlen=RECENT)  # widths of the last passes
        self._table: list[float] = []  # cached relative costs of widths 1 .., dropped when a shape changes

    def needs_probe(self, widths: tuple[int, ...]) -> bool:
        return not self.levels or any(w not in self.shapes for w in widths)

    def probe(self, run_pass: Callable[[int], None], widths: tuple[int, ...], device=None) -> None:
        """Time ``run_pass(width)`` for each width against a one-token pass of the same round
        (after one untimed round: first calls pay for allocations)."""
        widths = tuple(sorted(set(widths) | {1}))
        for width in widths:
            run_pass(width)
        for _ in range(self.probe_rounds):
            seconds = {}
            for width in widths:
                start = clock(device)
                run_pass(width)
                seconds[width] = clock(device) - start
            self.levels.append(seconds[1])
            for width in widths[1:]:
                self.shapes.setdefault(width, deque(maxlen=self.keep)).append(seconds[width] / seconds[1])
        self._table = []

    def add(self, width: int, seconds: float) -> None:
        """Record one pass of ``width`` tokens that took ``seconds``."""
        # The level is a fair yardstick only if other widths set it recently; a width running
        # alone would otherwise fold the machine's drift into its own shape.
        if self.levels and width != 1 and any(w != width for w in self.recent):
            samples = self.shapes.setdefault(width, deque(maxlen=self.keep))
            sample = seconds / self.level()
            # A neighbour's burst can make one pass look many times dearer (or cheaper): such a
            # sample is dropped once the width has a few, so one bad pass never sets the shape.
            if len(samples) < 3 or 1 / OUTLIER <= sample / statistics.median(samples) <= OUTLIER:
                samples.append(sample)
                self._table = []
        self.levels.append(seconds / self.shape(width))
        self.recent.append(width)

    def level(self) -> float:
        """Seconds of a one-token pass at the machine's current speed (median of recent passes)."""
        if not self.levels:
            raise ValueError("PassCosts has no timings yet: probe or add passes first")
        return statistics.median(self.levels)

    def shape(self, width: int) -> float:
        """Cost of a ``width`` pass over a one-token pass."""
        return self.table(width)[-1]

    def table(self, most: int) -> list[float]:
        """Relative costs of widths ``1 .. most``: measured widths by their median, others linear
        between measured ones and in proportion past the largest; never below a narrower width's."""
        if len(self._table) < most:
            self._table = self._compute(max(most, 16))
        return self._table[:most]

    def _compute(self, most: int) -> list[float]:
        median = {w: statistics.median(s) for w, s in sorted(self.shapes.items()) if s}
        known = list(median)
        table, floor = [], 0.0
        for width in range(1, most + 1):
            upper = next((w for w in known if w >= width), None)
            lower = next((w for w in reversed(known) if w <= width), None)
            if upper is None:
                cost = median[known[-1]] * width / known[-1]
            elif lower == upper:
                cost = median[upper]
            else:
                t = (width - lower) / (upper - lower)
                cost = median[lower] * (1 - t) + median[upper] * t
            floor = max(floor, cost)
            table.append(floor)
        return table

    def estimate(self, width: int) -> float:
        """Seconds of a ``width`` pass now."""
        return self.level() * self.shape(width)

    def ratios(self, widths: tuple[int, ...]) -> dict[int, float]:
        """Estimated cost of each width over a one-token pass."""
        return {w: self.shape(w) for w in widths}


class FixedCosts:
    """Relative pass costs by width from a calibration: read, never refined, so that a fixed table
    and a fixed seed give the same choices on every run.

    Args:
        shape: cost of a pass of each measured width over a one-token pass (width 1 is 1).
    """

    def __init__(self, shape: dict[int, float]) -> None:
        if 1 not in shape or any(w < 1 or not c > 0 for w, c in shape.items()):
            raise ValueError(f"FixedCosts needs width 1 and positive costs, got {shape}")
        self.shapes = {w: deque([float(c)], maxlen=1) for w, c in sorted(shape.items())}
        self._table: list[float] = []

    def needs_probe(self, widths: tuple[int, ...]) -> bool:
        return False

    def add(self, width: int, seconds: float) -> None:
        pass

    table = PassCosts.table
    shape = PassCosts.shape
    ratios = PassCosts.ratios
    _compute = PassCosts._compute


class CostBook:
    """Pass-cost tables of one process, one per kind of pass, and the width policies that read them.

    A pass's cost shape depends on where and how it runs: the model, the device, the dtype, the
    rows per pass, greedy or sampled, and the proposer. The book keeps one table per such key so
    that the generations that share it pool their timings. Where a calibration
    (:mod:`jacobix.tokens.width.calibration`) matches the model and device, its fixed table is
    used instead of live timings. Every :class:`~jacobix.tokens.decoding.Decoding` carries a book;
    reuse one ``Decoding`` (or pass ``costs=book``) to keep the tables, and what the adaptive
    width learnt, across calls.

    Args:
        calibration: a :class:`~jacobix.tokens.width.calibration.Calibration` to use (refused at
            generation time if it was measured for another model or device), or None: the
            matching one from the cache folder if ``cache``, else live timings.
        cache: look for a calibration in the cache folder (and save the live probe there).
        probe_rounds: interleaved rounds of a live table's start-up probe.
    """

    def __init__(self, calibration=None, *, cache: bool = True, probe_rounds: int = 5) -> None:
        self.tables: dict[tuple, PassCosts | FixedCosts] = {}
        self.probe_rounds = probe_rounds
        self.policies: dict[tuple, object] = {}
        self.calibration, self.cache = calibration, cache
        self.cached: dict = {}  # Where -> the cached Calibration, or None (looked up once per book)

    def table(self, key: tuple) -> PassCosts | FixedCosts:
        """The live table for ``key`` (model, device, dtype, rows per pass, greedy, proposer), new if unseen."""
        if tuple(key) not in self.tables:
            self.tables[tuple(key)] = PassCosts(probe_rounds=self.probe_rounds)
        return self.tables[tuple(key)]

    def policy(self, key: tuple, build):
        """The width policy kept for ``key``, built by ``build()`` if unseen."""
        if key not in self.policies:
            self.policies[key] = build()
        return self.policies[key]

    def save(self, path: str | Path) -> None:
        """Write every live table's recent timings as JSON (written whole through a temporary file)."""
        data = [{"key": list(key), "levels": list(t.levels), "shapes": {str(w): list(v) for w, v in t.shapes.items()}}
                for key, t in self.tables.items() if isinstance(t, PassCosts)]
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(data, indent=1) + "\n")
        partial.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> CostBook:
        """A book from :meth:`save`'s file.

        Raises:
            ValueError: a file that is not such a book (named, with what is wrong).
        """
        try:
            data = json.loads(Path(path).read_text())
            book = cls()
            for entry in data:
                table = book.table(tuple(entry["key"]))
                table.levels.extend(float(x) for x in entry["levels"])
                for width, samples in entry["shapes"].items():
                    table.shapes.setdefault(int(width), deque(maxlen=table.keep)).extend(float(x) for x in samples)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a jacobix pass-cost file ({type(error).__name__}: {error})") from None
        return book

    def __getstate__(self) -> dict:
        """A book sent to another process (a Ray actor, a spawned worker) keeps its calibration and
        options and starts its timings and policies afresh: they describe this process's passes."""
        return {"calibration": self.calibration, "cache": self.cache, "probe_rounds": self.probe_rounds}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["calibration"], cache=state["cache"], probe_rounds=state["probe_rounds"])

    def __repr__(self) -> str:
        return f"CostBook({len(self.tables)} table(s))"


__all__ = ["CostBook", "FixedCosts", "PROBE_WIDTHS", "PassCosts"]
