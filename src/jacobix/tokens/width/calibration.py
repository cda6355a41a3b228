"""Calibrated pass costs: what a pass of ``k`` tokens and ``B`` rows costs on one device, kept in a file.

A :class:`Calibration` holds, for one model on one device (dtype and CPU threads included), the
cost of a pass of each width relative to a one-token pass, for several batch sizes. ``jacobix
calibrate`` measures one (a warm-up, then interleaved rounds of every width against the
one-token pass of the same round; medians, with the rounds a noisy neighbour slowed dropped)
and writes it to the cache folder, where ``generate`` finds it; ``window="auto"`` then plans
with the fixed table, so the same seed makes the same choices on every run. A file measured on
another device or for another model is refused; a damaged one is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jacobix.core.checkpoints import cache_dir
from jacobix.tokens.width.costs import FixedCosts

log = logging.getLogger(__name__)
FORMAT = "jacobix-pass-costs/1"


GREEDY_JACOBI = "jacobi/repeat/greedy"  # the kind of pass `jacobix calibrate` measures by default


@dataclass(frozen=True)
class Where:
    """What a calibration is valid for: the model, the device, the dtype, the CPU threads, and the
    kind of pass (method, proposer, greedy or sampled, guided): a coupled SJD pass with guidance
    does more work per token than a greedy one, so its costs are measured on their own."""

    model: str
    device: str
    dtype: str
    threads: int
    kind: str = GREEDY_JACOBI

    def describe(self) -> str:
        return (f"model {self.model} on {self.device} ({self.dtype}, {self.threads} CPU thread{'s' * (self.threads != 1)}; "
                f"{self.kind} passes)")

    def place(self) -> tuple:
        """The model and the machine, without the kind of pass."""
        return self.model, self.device, self.dtype, self.threads


@dataclass(frozen=True)
class Calibration:
    """Relative pass costs by batch rows and width, for one :class:`Where`.

    Attributes:
        where: the model, device, dtype and threads it was measured for.
        costs: rows per pass -> {width: cost over a one-token pass of as many rows}.
        seconds: rows per pass -> seconds of a one-token pass when measured.
    """

    where: Where
    costs: dict[int, dict[int, float]]
    seconds: dict[int, float]

    def __post_init__(self) -> None:
        if not self.costs:
            raise ValueError("a Calibration needs at least one batch size")
        for rows, shape in self.costs.items():
            if rows < 1 or 1 not in shape or any(w < 1 or not (isinstance(c, float) and math.isfinite(c) and c > 0)
                                                 for w, c in shape.items()):
                raise ValueError(f"Calibration: rows {rows} has a bad table {shape}")

    def for_rows(self, rows: int) -> FixedCosts:
        """The table for ``rows`` rows per pass: the nearest measured batch sizes, interpolated in log rows."""
        measured = sorted(self.costs)
        lower = max((r for r in measured if r <= rows), default=measured[0])
        upper = min((r for r in measured if r >= rows), default=measured[-1])
        if lower == upper:
            return FixedCosts(self.costs[lower])
        t = (math.log(rows) - math.log(lower)) / (math.log(upper) - math.log(lower))
        low, high = FixedCosts(self.costs[lower]), FixedCosts(self.costs[upper])
        widths = sorted(set(self.costs[lower]) | set(self.costs[upper]))
        return FixedCosts({w: low.shape(w) * (1 - t) + high.shape(w) * t for w in widths})

    def ratio(self, rows: int, width: int) -> float:
        return self.for_rows(rows).shape(width)

    def record(self) -> dict[str, Any]:
        return {"format": FORMAT, **vars(self.where),
                "costs": {str(r): {str(w): c for w, c in sorted(s.items())} for r, s in sorted(self.costs.items())},
                "seconds": {str(r): s for r, s in sorted(self.seconds.items())}}

    def save(self, path: str | Path) -> Path:
        """Write the file whole through a temporary name (a reader never sees half of it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.record(), indent=1) + "\n")
        partial.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """A calibration from :meth:`save`'s file.

        Raises:
            ValueError: the file is missing, damaged or not a pass-cost file (named, with the reason).
        """
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            where = Where(model=str(data["model"]), device=str(data["device"]), dtype=str(data["dtype"]),
                          threads=int(data["threads"]), kind=str(data.get("kind", GREEDY_JACOBI)))
            costs = {int(r): {int(w): float(c) for w, c in s.items()} for r, s in data["costs"].items()}
            seconds = {int(r): float(s) for r, s in data["seconds"].items()}
            return cls(where, costs, seconds)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: not a usable jacobix pass-cost file ({type(error).__name__}: {error})") from None

    def check(self, where: Where, source: str = "this calibration") -> None:
        """Refuse a calibration measured for another model, device, dtype or thread count (a
        calibration you hand over stands for every kind of pass)."""
        if self.where.place() != where.place():
            raise ValueError(f"{source} was measured for {self.where.describe()}, but this generation runs "
                             f"{where.describe()}; run `jacobix calibrate` for this model and device, or leave "
                             "Decoding.costs unset")


def where_of(model: Any, device: torch.device | str, dtype: torch.dtype, kind: str = GREEDY_JACOBI) -> Where:
    """The :class:`Where` of a generation: the network's class and size, the device's name, dtype,
    threads and the kind of pass."""
    module = getattr(model, "model", model)  # the transformers module inside an adapter
    count = sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else 0
    return Where(model=f"{type(module).__name__}/{count}", device=device_name(device), dtype=str(dtype).removeprefix("torch."),
                 threads=torch.get_num_threads(), kind=kind)


def device_name(device: torch.device | str) -> str:
    """``cuda:<GPU name>`` or ``cpu:<processor name>``: what a pass's cost depends on."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{_processor()}"


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


def cache_path(where: Where) -> Path:
    """Where the calibration of ``where`` lives: ``$JACOBIX_COSTS`` or the cache's ``costs`` folder."""
    folder = Path(os.environ["JACOBIX_COSTS"]) if os.environ.get("JACOBIX_COSTS") else cache_dir("costs")
    digest = hashlib.sha1(json.dumps(vars(where), sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"{where.model.replace('/', '-')}-{digest}.json"


def cached(where: Where) -> Calibration | None:
    """The cached calibration for ``where``, or None. A damaged file is removed (with a warning) and
    never trusted; the next ``window="auto"`` run or ``jacobix calibrate`` writes it anew."""
    path = cache_path(where)
    if not path.exists():
        return None
    try:
        calibration = Calibration.load(path)
        calibration.check(where, str(path))
        if calibration.where != where:
            raise ValueError(f"{path}: measured for {calibration.where.describe()}, not {where.describe()}")
        return calibration
    except ValueError as error:
        log.warning("ignoring and removing a damaged pass-cost file: %s", error)
        path.unlink(missing_ok=True)
        return None




def costs_for(book: Any, where: Where, rows: int, key: tuple) -> FixedCosts | Any:
    """The cost table a generation plans with: the book's calibration (checked against ``where``),
    else the cached one when it covers ``rows`` (within 1.5x of a measured batch size), else the
    book's live table for ``key``."""
    if book.calibration is not None:
        book.calibration.check(where, "Decoding.costs")
        return book.calibration.for_rows(rows)
    if book.cache:
        if where not in book.cached:
            book.cached[where] = cached(where)
        calibration = book.cached[where]
        if calibration is not None and covers(calibration, rows):
            return calibration.for_rows(rows)
    return book.table(key)


def covers(calibration: Calibration, rows: int) -> bool:
    """Whether ``calibration`` speaks for ``rows`` rows per pass: between its smallest and largest batch
    (interpolated), or within 1.5x of one (a larger batch's table over-states a smaller one's costs)."""
    measured = sorted(calibration.costs)
    return measured[0] / 1.5 <= rows <= measured[-1] * 1.5


def remember(book: Any, where: Where, measured: Calibration) -> Calibration:
    """Merge a fresh measurement into the cached calibration of ``where`` and save it (when the book
    uses the cache), so that later runs plan with the same fixed costs; returns the merged one."""
    previous = book.cached.get(where) or cached(where)
    merged = Calibration(where, {**(previous.costs if previous else {}), **measured.costs},
                         {**(previous.seconds if previous else {}), **measured.seconds})
    try:
        merged.save(cache_path(where))
    except OSError as error:
        log.warning("could not save pass costs to %s: %s", cache_path(where), error)
    book.cached[where] = merged
    return merged


__all__ = ["Calibration", "GREEDY_JACOBI", "Where", "cache_path", "cached", "costs_for", "covers", "device_name", "remember", "where_of"]
