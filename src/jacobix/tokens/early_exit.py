"""LOSSY relaxed convergence for early-exit decoding: :class:`BinTolerance`, a pure rule that lives
in :mod:`jacobix.core.acceptance` beside the exact ones (re-exported here)."""

from jacobix.core.acceptance import BinTolerance

__all__ = ["BinTolerance"]
