"""jacobix: parallel generation for sequential generative models by Jacobi iteration."""

from jacobix.drafts import CopyInit, DraftContext, DraftInit, RandomInit
from jacobix.engine import Acceptance, Drafts, FixedPointState, JacobiProblem, SolveStats, solve
from jacobix.generate import DecodeStats, GenerateResult, generate
from jacobix.sampling import LogitsProcessor, SamplingConfig

__version__ = "0.1.0"

__all__ = [
    "Acceptance",
    "CopyInit",
    "DecodeStats",
    "DraftContext",
    "DraftInit",
    "Drafts",
    "FixedPointState",
    "GenerateResult",
    "JacobiProblem",
    "LogitsProcessor",
    "RandomInit",
    "SamplingConfig",
    "SolveStats",
    "generate",
    "solve",
]
