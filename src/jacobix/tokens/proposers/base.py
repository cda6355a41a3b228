"""Proposers: where the drafts of a token window come from.

A proposer turns the decoding state into *candidates*: ``R`` draft sequences of ``D`` tokens per
row, the distribution each draft was drawn from (None for fixed drafts: one-hot), and a *source*
id per slot that says where the draft came from (the width policy keeps pass rates per source).
It never calls the model and never touches the cache: the verifier does that
(:mod:`jacobix.tokens.verify`).

Vocabulary of one sweep (vLLM's): the verifier tests the drafts; the leading ones that pass are
*accepted*; the first failing slot gets a *recovered* token, or, when all pass, a *bonus* token.
After the sweep the model's outputs for the slots it evaluated are handed back to the proposer
through :meth:`Proposer.redraft` (greedy: the argmax; sampling: a draw from the target) and become
the next sweep's carried drafts (Jacobi iteration).

Source ids are numbered by each proposer's ``sources`` tuple: id ``i`` is ``sources[i]``. A
proposer that wraps another keeps the inner ids first and appends its own.

A new proposer in a dozen lines (drafts that guess "the token two back")::

    class TwoBack(Proposer):
        sources = (DraftSource("two-back", prior=0.2),)

        def propose(self, context: ProposalContext) -> Candidates:
            carried = context.carried_tokens()  # (B, D) carried drafts, fresh slots as placeholders
            source = (context.positions - 2).clamp_min(0)  # (B, D)
            guess = torch.where(context.fresh, context.canvas.gather(1, source), carried)
            return Candidates.single(guess)

    jacobix.generate(model, ids, method="jacobi", proposer=TwoBack())
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from jacobix.core.engine import Drafts
from jacobix.core.sampling import Randomness, sample


@dataclass(frozen=True)
class DraftSource:
    """One kind of draft a proposer makes.

    Attributes:
        name: shown in statistics, e.g. "jacobi", "text-3" (n-gram pool, 3-token key).
        prior: pass rate per slot assumed before any observation (the adaptive width policy).
    """

    name: str
    prior: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.prior < 1.0:
            raise ValueError(f"DraftSource.prior must be in [0, 1), got {self.prior} for {self.name!r}")


@dataclass(frozen=True)
class ProposalContext:
    """What a proposer may look at before a sweep.

    Attributes:
        canvas: (B, C) committed tokens of each row followed by the carried drafts; fresh slots
            and everything after them hold placeholders.
        length: (B,) committed tokens per row (prompt included).
        positions: (B, D) absolute position of each draft slot.
        fresh: (B, D) True where a slot has no carried draft (a suffix of each row's window).
        carried: the carried drafts (values (B, D), their distributions, per-slot state), or None
            at the first sweep.
        prompt_length: (B,) prompt tokens per row.
        vocab_size: number of tokens.
        greedy: True for greedy decoding (draft distributions are not needed).
        generator: explicit randomness.
    """

    canvas: Tensor
    length: Tensor
    positions: Tensor
    fresh: Tensor
    carried: Drafts | None
    prompt_length: Tensor
    vocab_size: int
    greedy: bool
    generator: Randomness

    def carried_tokens(self) -> Tensor:
        """(B, D) the carried drafts (placeholders at fresh slots)."""
        return self.canvas.gather(1, self.positions)


@dataclass(frozen=True)
class Candidates:
    """Draft sequences for one sweep.

    Attributes:
        tokens: (B, R, D) R candidate draft sequences per row; candidate 0 is the one carried on.
        p_draft: (B, R, D, V) the distribution each draft was drawn from, or None when every
            draft is fixed (one-hot). Fixed drafts keep sampling lossless.
        source: (B, R, D) source id of each slot (an index into the proposer's ``sources``), a host
            tensor: the width policy reads it before the pass without waiting for the device.
        embeds: (B, R, D, E) input embeddings fed in place of the drafts' token embeddings
            (e.g. SJD2's noisy slots), or None.
        verifiable: (B, R, D) False for drafts that must not be tested (acceptance stops there
            and the slot is drawn from the target), or None: all may be tested.
        state: (B, D, *S) continuous per-slot state of candidate 0, carried by the engine to the
            next sweep with its slot, or None. A slot that enters the window after the drafts (the
            bonus slot of a sweep) arrives with zero state.
        branches: (B, P, K) a draft tree's branches at the first P draft slots of candidate 0
            (branch 0 is the draft itself; :mod:`jacobix.core.tree`), or None for a chain.
        branch_laws: (B, P, K, V) the law each branch was drawn from given the branches before it.
    """

    tokens: Tensor
    p_draft: Tensor | None
    source: Tensor
    embeds: Tensor | None = None
    verifiable: Tensor | None = None
    state: Tensor | None = None
    branches: Tensor | None = None
    branch_laws: Tensor | None = None

    @classmethod
    def single(cls, tokens: Tensor, p_draft: Tensor | None = None, source: int | Tensor = 0) -> Candidates:
        """One candidate per row from drafts (B, D) (and their distributions (B, D, V))."""
        source = torch.as_tensor(source).expand(tokens.shape)  # on the host, as the policy reads it
        return cls(tokens[:, None], None if p_draft is None else p_draft[:, None], source[:, None].long())

    @property
    def count(self) -> int:
        """R, candidates per row."""
        return self.tokens.shape[1]


class Proposer:
    """Base class of draft sources; subclasses implement :meth:`propose`.

    Attributes:
        sources: the kinds of draft this proposer makes; ids in :attr:`Candidates.source` index it.
        candidates: most candidate sequences per row it returns (R).
    """

    sources: tuple[DraftSource, ...] = (DraftSource("jacobi", 0.1),)
    candidates: int = 1

    def begin(self, batch_size: int) -> None:
        """Forget everything of an earlier generation (called once per ``generate``, before proposing)."""

    def propose(self, context: ProposalContext) -> Candidates:
        """Candidates for the next sweep."""
        raise NotImplementedError

    def redraft(self, p_target: Tensor, positions: Tensor, generator: Randomness, previous: Drafts | None = None) -> Tensor:
        """Next guesses (B, W) at evaluated slots from the sweep's targets (B, W, V) when sampling.

        Args:
            p_target: target distributions of the slots the sweep evaluated.
            positions: (B, W) absolute positions those guesses are for.
            generator: randomness.
            previous: the drafts the sweep fed at the first ``W - 1`` of those slots (values (B, W - 1)
                and their laws), for redrafts that keep old drafts; None when there are none.
        The default draws from ``p_target`` with fresh randomness (SJD's update).
        """
        return sample(p_target, generator)

    def observe(self, outputs: Tensor, running: Tensor) -> None:
        """See a greedy sweep's outputs (B, R, W) for every candidate row (``running`` (B,) rows only)."""


def one_hot(tokens: Tensor, vocab_size: int) -> Tensor:
    """The draft distribution of fixed drafts (..., V): all mass on the token."""
    return torch.nn.functional.one_hot(tokens, vocab_size).float()


__all__ = ["Candidates", "DraftSource", "ProposalContext", "Proposer", "one_hot"]
