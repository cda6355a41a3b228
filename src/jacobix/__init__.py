"""jacobix: parallel generation for sequential generative models by Jacobi iteration."""

from jacobix.api import generate
from jacobix.api import load_text_model
from jacobix.core.engine import Acceptance, Drafts, FixedPointState, JacobiProblem, SolveStats, solve
from jacobix.core.sampling import LogitsProcessor, SamplingConfig
from jacobix.models.protocol import CausalLM, LMOutput
from jacobix.tokens.decoding import Decoding, Guidance, LossyExit
from jacobix.tokens.methods import METHODS, Method, register_method
from jacobix.tokens.width import AdaptiveConfig, AdaptiveWidth, CostBook, FixedWidth, PassCosts, WidthPolicy
from jacobix.tokens.width.multiblock import MultiBlock
from jacobix.tokens.proposers import (
    Candidates, CopyInit, CoupledProposer, DraftContext, DraftInit, DraftSource, JacobiProposer, LookaheadConfig,
    NGramProposer, ProposalContext, Proposer, RandomInit,
)
from jacobix.tokens.result import DecodeStats, GenerateResult

__version__ = "0.1.0"

__all__ = [
    "Acceptance",
    "AdaptiveConfig",
    "AdaptiveWidth",
    "Candidates",
    "CausalLM",
    "CostBook",
    "Decoding",
    "Guidance",
    "LossyExit",
    "METHODS",
    "CoupledProposer",
    "DraftSource",
    "FixedWidth",
    "JacobiProposer",
    "LMOutput",
    "LookaheadConfig",
    "Method",
    "MultiBlock",
    "NGramProposer",
    "PassCosts",
    "ProposalContext",
    "Proposer",
    "WidthPolicy",
    "register_method",
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
    "load_text_model",
    "solve",
]


def __getattr__(name: str):
    """``jacobix.hf`` is the transformers adapter, imported on first use (transformers is optional)."""
    if name == "hf":
        import importlib

        return importlib.import_module("jacobix.hf")
    raise AttributeError(f"module 'jacobix' has no attribute {name!r}")
