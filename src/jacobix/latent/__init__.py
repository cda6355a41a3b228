"""Latent thoughts (PCCoT): continuous chain of thought solved by Jacobi passes on the engine."""

from jacobix.latent.model import LatentConfig, LatentReasoner, ReasonerConfig, load_reasoner, save_reasoner
from jacobix.latent.thoughts import answer, pack_questions, read_answer, think

__all__ = ["LatentConfig", "LatentReasoner", "ReasonerConfig", "answer", "load_reasoner", "pack_questions",
           "read_answer", "save_reasoner", "think"]
