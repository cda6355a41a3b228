"""Latent thoughts on the engine: PCCoT's Jacobi passes, sequential continuous CoT, and the answer.

The c latent inputs are the fixed point ``x_i = proj(h(x_0 .. x_{i-1}))`` of a causal model, with
``x_0`` the ``<bot>`` embedding and ``h`` the last-layer hidden state at slot ``i - 1`` (CODI's
continuous chain of thought). :class:`LatentProblem` hands it to :func:`jacobix.core.engine.solve`
with continuous values (B, C, dim), the way TarFlow sampling does:

- ``jacobi`` (PCCoT, arXiv 2506.18582): window c over slots 0..c-1; the first sweep reads the
  question and c placeholders (the placeholder pass), every later sweep feeds the previous sweep's
  outputs; :func:`~jacobix.core.acceptance.segment_accept` commits the whole window after exactly
  T sweeps. Sweep ``t`` is exact at slots 1..t, so T >= c is sequential continuous CoT exactly.
- ``sequential``: window 1, one latent per sweep (CODI, c sweeps).
- ``exact``: window c with :func:`~jacobix.core.acceptance.tolerance_accept` at rtol = atol = 0:
  iterates to the fixed point, a check of the T = c identity.

The answer pass feeds the committed latents, ``<eot>`` and the answer prompt in one forward and
reads the answer at the prompt's last position. The paper's pass T (whose outputs it discards)
and its answer pass are thus one forward here: PCCoT costs T + 1 forwards, sequential c + 1.

Worked example, c = 3, T = 2, a row whose question has q = 5 tokens (positions 0..4)::

    sweep 1  inputs  question, <bot>, <lat>, <lat>     positions 0..4, 5, 6, 7
             outputs y1 (exact), y2, y3               from hidden states at positions 5, 6, 7
    sweep 2  inputs  <bot>, y1, y2                    positions 5, 6, 7 (question read from the cache)
             outputs z1, z2 (exact), z3               -> committed (T = 2)
    answer   inputs  z1, z2, z3, <eot>, answer, :     positions 6..11; answer read at position 11

Rows are right-padded with per-row positions: a row's pads sit past everything it will read, so
no real token ever attends to a pad; :func:`pack_questions` turns any padding into this layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from jacobix.core.acceptance import segment_accept, tolerance_accept
from jacobix.core.cache import KVCache
from jacobix.core.engine import Acceptance, Drafts, FixedPointState, SolveStats, solve
from jacobix.latent.model import FunctionalCache, LatentReasoner

ThinkMethod = Literal["jacobi", "sequential", "exact"]
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
THINK_METHODS: tuple[str, ...] = ("jacobi", "sequential", "exact")


def pack_questions(tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Right-pad a batch given with any padding (left, right or mixed).

    Args:
        tokens: (B, L) token ids.
        mask: (B, L) True at real tokens; each row's real tokens are kept in order.
    Returns:
        questions (B, L') with each row's tokens first (pads are 0), and lengths (B,).
    """
    if tokens.shape != mask.shape or tokens.dim() != 2:
        raise ValueError(f"tokens and mask must both be (B, L), got {tuple(tokens.shape)} and {tuple(mask.shape)}")
    mask = mask.bool()
    lengths = mask.sum(1)  # (B,)
    if int(lengths.min()) < 1:
        raise ValueError("every question needs at least one real token")
    order = torch.sort((~mask).long(), dim=1, stable=True).indices  # (B, L) real tokens first, in order
    packed = tokens.gather(1, order).masked_fill(~mask.gather(1, order), 0)  # (B, L)
    return packed[:, : int(lengths.max())], lengths


def context_needed(question_length: int, latents: int, tail: int) -> int:
    """Positions a batch with questions of up to ``question_length`` tokens uses (cache capacity), when
    the answer pass feeds ``tail`` tokens after the latents (``<eot>`` and the prompt: ``1 + len(prompt)``)."""
    return question_length + 2 * latents + tail + 1


class LatentProblem:
    """The engine's step, rule and drafts for the c latent thoughts of a batch of questions.

    Args:
        model: the reasoner.
        cache: its cache (KVCache for inference, FunctionalCache for training), B rows.
        questions: (B, Q) right-padded question tokens; read by the first sweep.
        lengths: (B,) question lengths.
        rule: ``fixed`` (commit the window after ``passes`` sweeps) or ``exact`` (tolerance rule at 0).
        passes: sweeps per window for the fixed rule (T for PCCoT, 1 for sequential).
        reach: positions past the question a row's real tokens may use (its pads go beyond them).
    """

    def __init__(self, model: LatentReasoner, cache: KVCache | FunctionalCache, questions: Tensor, lengths: Tensor,
                 *, rule: Literal["fixed", "exact"], passes: int, reach: int) -> None:
        self.model, self.cache, self.rule, self.passes, self.reach = model, cache, rule, passes, reach
        self.questions, self.lengths = questions, lengths
        self.pending = True  # the question is fed with the first sweep

    def sweep(self, state: FixedPointState, drafts: Drafts) -> Acceptance:
        n = state.length  # (B,)
        d = drafts.values.shape[1]
        inputs = torch.cat([state.last_values()[:, None], drafts.values], 1)  # (B, D+1, dim)
        positions = (self.lengths + n - 1)[:, None] + torch.arange(d + 1, device=n.device)  # (B, D+1)
        if self.pending:
            inputs, positions = self._with_question(inputs, positions)
            self.pending = False
        out = self.model.lm(None, positions, self.cache, embeds=inputs, return_hidden=True)
        values = self.model.project(out.hidden_states[-1][:, -(d + 1):])  # (B, D+1, dim)
        if self.rule == "exact":
            accepted = tolerance_accept(drafts.values, values, rtol=0.0, atol=0.0)
            return Acceptance(n_commit=accepted + 1, values=values, proposals=Drafts(values), n_accepted=accepted)
        never = torch.full_like(n, float("inf"), dtype=values.dtype)  # no residual test: commit on the sweep count
        n_commit = segment_accept(never, state.sweeps_on_window + 1, tolerance=0.0, max_sweeps=self.passes, width=d + 1)
        return Acceptance(n_commit=n_commit, values=values, proposals=Drafts(values), n_accepted=(n_commit - 1).clamp_min(0))

    def _with_question(self, window: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Prepend the question: its pads go past the row's answer prompt, where no real query looks."""
        q = self.questions.shape[1]
        slots = torch.arange(q, device=positions.device)[None]  # (1, Q)
        pad_home = (self.lengths + self.reach)[:, None]  # (B, 1)
        question_positions = torch.where(slots < self.lengths[:, None], slots, pad_home + slots - self.lengths[:, None])
        embeds = self.model.lm.embed(self.questions)  # (B, Q, dim)
        return torch.cat([embeds, window], 1), torch.cat([question_positions, positions], 1)

    def draft(self, state: FixedPointState, carried: Drafts | None, fresh: Tensor) -> Drafts:
        lm = self.model.lm
        placeholder = lm.embed(torch.full_like(fresh, self.model.latent.placeholder, dtype=torch.long))  # (B, D, dim)
        if carried is None:
            return Drafts(placeholder)
        return Drafts(torch.where(fresh[..., None], placeholder, carried.values))

    def rollback(self, state: FixedPointState) -> None:
        # Slots past a row's prefix hold guesses; the next sweep overwrites them before any query
        # reads them, and committed slots hold keys of their exact values (a guess is committed
        # only when equal to its output, or re-fed as the next window's first input).
        self.cache.rollback(self.lengths + state.length - 1)


@dataclass
class Thoughts:
    """The latents of a batch and the cache holding its question.

    Attributes:
        latents: (B, c, dim) latent inputs of slots 1..c.
        cache: the cache the answer pass reads.
        lengths: (B,) question lengths.
        stats: the engine's counts (``forward_passes`` = sweeps; the answer adds one).
    """

    latents: Tensor
    cache: KVCache | FunctionalCache
    lengths: Tensor
    stats: SolveStats


def think(model: LatentReasoner, questions: Tensor, lengths: Tensor, *, method: ThinkMethod = "jacobi",
          passes: int | None = None, differentiable: bool = False, latents: int | None = None,
          tail: int | None = None) -> Thoughts:
    """Compute the c latent thoughts of each question on the engine.

    Args:
        model: the reasoner.
        questions: (B, Q) right-padded question tokens (see :func:`pack_questions`).
        lengths: (B,) question lengths.
        method: ``jacobi`` (PCCoT, T passes), ``sequential`` (c passes) or ``exact`` (to the fixed point).
        passes: T; default the model's trained ``latent.passes``.
        differentiable: use a cache without in-place writes so gradients flow (training).
        latents: thoughts to compute; default the model's c (a curriculum stage uses fewer).
        tail: tokens the answer pass will feed after the latents; default ``<eot>`` and the prompt
            (a curriculum stage feeds the written steps left as well).
    Returns:
        the latents, the cache and the engine's statistics.
    Raises:
        ValueError: an unknown method, T < 1, token ids out of the vocabulary, lengths out of 1..Q, or
            questions longer than the model's context. Columns past the longest question (padding
            wider than any row) are dropped.
    """
    if method not in THINK_METHODS:
        raise ValueError(f"method must be one of {THINK_METHODS}, got {method!r}")
    passes = model.latent.passes if passes is None else passes
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes (T) must be >= 1, got {passes}")
    c = model.latent.latents if latents is None else latents
    if isinstance(c, bool) or not isinstance(c, int) or c < 1:
        raise ValueError(f"latents must be an int >= 1, got {latents!r}")
    tail = 1 + len(model.latent.prompt) if tail is None else tail
    questions, b = _checked_questions(model, questions, lengths), len(questions)
    capacity = context_needed(int(lengths.max()), c, tail)
    if capacity > model.config.llama.max_seq_len:
        raise ValueError(f"questions of up to {int(lengths.max())} tokens with c = {c} latents need {capacity} positions; "
                         f"the model's context (max_seq_len) is {model.config.llama.max_seq_len}: shorten the question")
    cache = FunctionalCache(model.lm, b, capacity) if differentiable else model.lm.new_cache(b, capacity)
    window = 1 if method == "sequential" else c
    rule = "exact" if method == "exact" else "fixed"
    problem = LatentProblem(model, cache, questions, lengths, rule=rule, passes=1 if method == "sequential" else passes,
                            reach=capacity - int(lengths.max()) - 1)
    bot = model.lm.embed(torch.full((b, 1), model.latent.bot, dtype=torch.long, device=questions.device))  # (B, 1, dim)
    if differentiable:
        if method == "exact":
            raise ValueError("method 'exact' has no differentiable path (its sweep count depends on the values)")
        latents, stats = _solve_differentiable(problem, bot, c, window)
        return Thoughts(latents=latents, cache=cache, lengths=lengths, stats=stats)
    one = torch.ones(b, dtype=torch.long, device=questions.device)
    state = FixedPointState.start(bot, one, one + c, window)
    stats = solve(problem, state, window=window)
    return Thoughts(latents=state.values[:, 1 : c + 1], cache=cache, lengths=lengths, stats=stats)


def _checked_questions(model: LatentReasoner, questions: Tensor, lengths: Tensor) -> Tensor:
    """``questions`` without the columns past the longest one (pads only), once shapes, lengths and ids are checked."""
    if questions.dim() != 2 or questions.dtype in (torch.bool, *FLOATS):
        raise ValueError(f"questions must be (B, Q) integer token ids, got {questions.dtype} of shape {tuple(questions.shape)}")
    b, q = questions.shape
    if b < 1 or lengths.shape != (b,) or lengths.dtype in (torch.bool, *FLOATS) or int(lengths.min()) < 1 \
            or int(lengths.max()) > q:
        raise ValueError(f"lengths must be (B,) = ({b},) integers with values in 1..{q}")
    vocab = model.config.llama.vocab_size
    real = torch.arange(q, device=questions.device)[None] < lengths[:, None]  # (B, Q) the tokens read
    if bool(((questions < 0) | (questions >= vocab))[real].any()):
        raise ValueError(f"question token ids must be in 0..{vocab - 1}")
    return questions[:, : int(lengths.max())]


def _solve_differentiable(problem: LatentProblem, bot: Tensor, c: int, window: int) -> tuple[Tensor, SolveStats]:
    """The engine's loop for fixed rules without in-place writes, so autograd reaches every pass.

    Same sweeps and commits as :func:`~jacobix.core.engine.solve` for rules that commit the same
    number of values in every row (the fixed rule); the committed values grow by concatenation.
    """
    b = bot.shape[0]
    committed, sweeps, passes = bot, torch.zeros(b, dtype=torch.long, device=bot.device), 0  # (B, 1, dim)
    drafts = problem.draft(FixedPointState.start(bot, sweeps + 1, sweeps + 1 + c, window), None,
                           torch.ones(b, window - 1, dtype=torch.bool, device=bot.device))
    while committed.shape[1] <= c:
        length = torch.full_like(sweeps, committed.shape[1])
        state = FixedPointState.start(committed, length, torch.full_like(sweeps, c + 1), window)
        state.sweeps_on_window = sweeps
        decision = problem.sweep(state, drafts)
        passes += 1
        n_commit = int(decision.n_commit.max())
        if int(decision.n_commit.min()) != n_commit:
            raise ValueError("the differentiable path needs a rule that commits alike in every row")
        n_commit = min(n_commit, c + 1 - committed.shape[1])
        committed = torch.cat([committed, decision.values[:, :n_commit]], 1)  # (B, n + n_commit, dim)
        sweeps = sweeps + 1 if n_commit == 0 else torch.zeros_like(sweeps)
        drafts = Drafts(decision.values[:, n_commit : n_commit + window - 1]) if n_commit == 0 else problem.draft(
            state, None, torch.ones(b, window - 1, dtype=torch.bool, device=bot.device))
    empty = torch.zeros(0, b, dtype=torch.long)
    stats = SolveStats(forward_passes=passes, committed=empty, accepted=empty, active=empty.bool(), lossy=empty, window=window)
    return committed[:, 1:], stats


@dataclass
class AnswerOutput:
    """The answer pass: logits (B, V) and every layer's hidden state (B, dim) at the last token fed,
    and the logits at every position fed (B, c + R, V): the latents', then the tail's."""

    logits: Tensor
    hidden: tuple[Tensor, ...]
    every_logits: Tensor


def read_answer(model: LatentReasoner, thoughts: Thoughts, tail: Tensor | None = None) -> AnswerOutput:
    """One forward over ``latents, tail`` against the question's cache; ``tail`` (B, R) defaults to
    ``<eot>`` and the answer prompt, whose last position gives the answer."""
    latent = model.latent
    b, c = thoughts.latents.shape[:2]
    if tail is None:
        tail = torch.tensor([latent.eot, *latent.prompt], device=thoughts.lengths.device).expand(b, -1)  # (B, 1+P)
    embeds = torch.cat([thoughts.latents, model.lm.embed(tail)], 1)  # (B, c+R, dim)
    positions = (thoughts.lengths + 1)[:, None] + torch.arange(embeds.shape[1], device=embeds.device)  # (B, c+R)
    out = model.lm(None, positions, thoughts.cache, embeds=embeds, return_hidden=True)
    return AnswerOutput(logits=out.logits[:, -1], hidden=tuple(h[:, -1] for h in out.hidden_states), every_logits=out.logits)


@dataclass
class AnswerResult:
    """Generated answers: ``tokens`` (B,) and the forward passes made (sweeps + the answer pass)."""

    tokens: Tensor
    forward_passes: int
    stats: SolveStats


@torch.no_grad()
def answer(model: LatentReasoner, questions: Tensor, lengths: Tensor, *, method: ThinkMethod = "jacobi",
           passes: int | None = None) -> AnswerResult:
    """Greedy answers of a batch of questions (see :func:`think` for the arguments)."""
    thoughts = think(model, questions, lengths, method=method, passes=passes)
    tokens = read_answer(model, thoughts).logits.argmax(-1)  # (B,)
    return AnswerResult(tokens=tokens, forward_passes=thoughts.stats.forward_passes + 1, stats=thoughts.stats)


__all__ = ["AnswerOutput", "AnswerResult", "LatentProblem", "THINK_METHODS", "Thoughts", "answer", "context_needed",
           "pack_questions", "read_answer", "think"]
