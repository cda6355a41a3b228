"""jacobix: parallel generation for sequential generative models by Jacobi iteration."""

from jacobix.tokens.proposers.basic import CopyInit, DraftContext, DraftInit, RandomInit
from jacobix.core.engine import Acceptance, Drafts, FixedPointState, JacobiProblem, SolveStats, solve
from jacobix.tokens.generate import DecodeStats, GenerateResult, generate
from jacobix.core.sampling import LogitsProcessor, SamplingConfig

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


def __getattr__(name: str):
    """``jacobix.hf`` is the transformers adapter, imported on first use (transformers is optional)."""
    if name == "hf":
        import importlib

        return importlib.import_module("jacobix.integrations.hf")
    raise AttributeError(f"module 'jacobix' has no attribute {name!r}")
