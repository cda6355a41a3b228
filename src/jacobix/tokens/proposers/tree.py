"""Draft trees (SJD-PAC's proactive drafting): alternatives to the first drafts of a window.

SJD loses most where a window's first draft is rejected: about half of its passes commit one
token. :class:`TreeProposer` wraps any sampling proposer and, at each of the first
``depth - 1`` draft slots, draws ``branches - 1`` alternatives from that draft's own law without
replacement. The verifier feeds every combination as one tree in one forward
(:mod:`jacobix.core.tree`) and tries the alternatives where a draft is rejected, so a pass that
would have committed one token can commit up to ``depth``. The drafts need no extra forward: their
laws are the ones the inner proposer already carries (the last pass's targets, or the draft rule's
law for fresh slots), and recursive rejection over siblings keeps the output exact.

The alternatives are drawn from a mix: ``RULE_SHARE`` of the inner proposer's draft rule's law at
the slot (e.g. ``prior-above``: the code frequencies given the committed token above) and the
rest of the trunk draft's own law. The trunk's draft was made before the last committed token was
known; the rule's law looks at context that is settled, so its alternatives pass where the
trunk's fail (on the bundled image model, w64 K4 D3: 5.2x -> 5.7x fewer passes than AR, on 40
images). Each alternative is labelled with the mix it was drawn from (without replacement), the
trunk draft with its own law, so the sibling rule stays exact.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from jacobix.core.engine import Drafts
from jacobix.core.sampling import Randomness
from jacobix.core.tree import DraftTree, alternatives
from jacobix.tokens.proposers.base import Candidates, ProposalContext, Proposer, one_hot
from jacobix.tokens.proposers.basic import DraftContext

RULE_SHARE = 0.8  # the draft rule's share of the alternatives' law (measured: 0.3 / 0.5 / 0.8 gave 5.47x / 5.66x / 5.67x)


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
        own = found.p_draft[:, 0, :span]  # (B, P, V) the trunk drafts' laws
        mix = own if (rule := self._rule_law(context, span)) is None else RULE_SHARE * rule.to(own.dtype) + (1 - RULE_SHARE) * own
        tokens, branch_laws = alternatives(mix, found.tokens[:, 0, :span], self.tree.branches, context.generator)
        branch_laws[:, :, 0] = own  # branch 0 is the trunk's draft, drawn from its own law
        return dataclasses.replace(found, branches=tokens, branch_laws=branch_laws)

    def _rule_law(self, context: ProposalContext, span: int) -> Tensor | None:
        """(B, P, V) the inner proposer's draft rule's law at the first ``span`` slots, or None without a rule."""
        rule = getattr(self.inner, "init", None)
        if rule is None:
            return None
        positions = context.positions[:, :span]
        tokens, law = rule(DraftContext(context.canvas, positions, torch.ones_like(positions, dtype=torch.bool),
                                        context.prompt_length, context.vocab_size, context.generator))
        return one_hot(tokens, context.vocab_size) if law is None else law

    def redraft(self, p_target: Tensor, positions: Tensor, generator: Randomness, previous: Drafts | None = None) -> Tensor:
        return self.inner.redraft(p_target, positions, generator, previous)

    def observe(self, outputs: Tensor, running: Tensor) -> None:
        self.inner.observe(outputs, running)


__all__ = ["TreeProposer"]
