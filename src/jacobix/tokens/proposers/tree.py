"""Draft trees (SJD-PAC's proactive drafting): alternatives to the first drafts of a window.

SJD loses most where a window's first draft is rejected: about half of its passes commit one
token. :class:`TreeProposer` wraps any sampling proposer and, at each of the first
``depth - 1`` draft slots, draws ``branches - 1`` alternatives from that draft's own law without
replacement. The verifier feeds every combination as one tree in one forward
(:mod:`jacobix.core.tree`) and tries the alternatives where a draft is rejected, so a pass that
would have committed one token can commit up to ``depth``. The drafts need no extra forward: their
laws are the ones the inner proposer already carries (the last pass's targets, or the draft rule's
law for fresh slots), and recursive rejection over siblings keeps the output exact.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from jacobix.core.engine import Drafts
from jacobix.core.sampling import Randomness
from jacobix.core.tree import DraftTree, alternatives
from jacobix.tokens.proposers.base import Candidates, ProposalContext, Proposer


class TreeProposer(Proposer):
    """``inner``'s candidates plus a draft tree's branches at the first ``tree.depth - 1`` slots.

    Args:
        inner: a proposer with one candidate whose drafts carry their laws (sampling).
        tree: branches and depth.
    """

    def __init__(self, inner: Proposer, tree: DraftTree) -> None:
        if inner.candidates != 1:
            raise ValueError("a draft tree grows from one chain of drafts; use Decoding.tree without lookahead verify>1")
        self.inner, self.tree = inner, tree
        self.sources, self.candidates = inner.sources, 1

    def begin(self, batch_size: int) -> None:
        self.inner.begin(batch_size)

    def propose(self, context: ProposalContext) -> Candidates:
        found = self.inner.propose(context)
        if context.greedy or found.p_draft is None:
            return found
        span = min(self.tree.depth - 1, found.tokens.shape[2])
        laws = found.p_draft[:, 0, :span]  # (B, P, V)
        tokens, branch_laws = alternatives(laws, found.tokens[:, 0, :span], self.tree.branches, context.generator)
        return dataclasses.replace(found, branches=tokens, branch_laws=branch_laws)

    def redraft(self, p_target: Tensor, positions: Tensor, generator: Randomness, previous: Drafts | None = None) -> Tensor:
        return self.inner.redraft(p_target, positions, generator, previous)

    def observe(self, outputs: Tensor, running: Tensor) -> None:
        self.inner.observe(outputs, running)


__all__ = ["TreeProposer"]
