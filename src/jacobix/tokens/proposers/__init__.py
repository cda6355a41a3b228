"""Where drafts come from: each proposer turns the decoding state into candidates (see :mod:`.base`)."""

from jacobix.tokens.proposers.base import Candidates, DraftSource, ProposalContext, Proposer
from jacobix.tokens.proposers.basic import CopyInit, DraftContext, DraftInit, JacobiProposer, RandomInit, resolve_init
from jacobix.tokens.proposers.coupled import CoupledProposer
from jacobix.tokens.proposers.denoising import NoisyInputs, SJD2Config, SJD2Proposer
from jacobix.tokens.proposers.ngram import LookaheadConfig, NGramProposer

__all__ = [
    "Candidates", "CopyInit", "CoupledProposer", "DraftContext", "DraftInit", "DraftSource", "JacobiProposer",
    "LookaheadConfig", "NGramProposer", "NoisyInputs", "ProposalContext", "Proposer", "RandomInit", "SJD2Config",
    "SJD2Proposer", "resolve_init",
]
