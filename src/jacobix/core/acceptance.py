"""Acceptance rules: which prefix of a window of guesses the engine may commit.

Vocabulary (as in vLLM's rejection sampler): a sweep checks ``D`` *drafts* (guesses) against
``D + 1`` model outputs. The leading drafts that pass are *accepted*; the first failing position
gets a *recovered* value; when every draft passes, the last output is a *bonus* value. Either
way a sweep commits ``accepted + 1`` values, which is why Jacobi never needs more passes than
sequential decoding.

All rules are pure: tensors and an explicit generator in, tensors out, no device sync.

:class:`BinTolerance` is the one LOSSY rule here: CEED-VLA's relaxed convergence test for early
exit. Exact Jacobi commits a draft when the model's output at its position equals it; early exit
stops iterating sooner, when tokens that stand for bins of an ordered value (action tokens) moved
by at most a few bins between sweeps, and commits the window as it stands. The output then differs
from greedy decoding wherever a token had not yet converged; the engine counts every such token
in ``DecodeStats.lossy_per_pass``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from jacobix.core.sampling import Randomness, sample, uniform


def leading_true(mask: Tensor) -> Tensor:
    """Length of the all-True prefix of each row of ``mask`` (B, D); returns (B,) long."""
    return mask.long().cumprod(dim=-1).sum(dim=-1)


def greedy_accept(drafts: Tensor, target_tokens: Tensor) -> Tensor:
    """Exact-match rule of greedy Jacobi decoding (docs/text.md, "Why it is exact").

    Args:
        drafts: (B, D) guessed tokens for positions n .. n+D-1.
        target_tokens: (B, D+1) argmax of the model at positions n .. n+D, computed from the
            committed prefix followed by the drafts.
    Returns:
        (B,) number of accepted drafts. The committed tokens are ``target_tokens[:, :accepted+1]``:
        where drafts were accepted they equal the targets, and the target after the last
        accepted draft is exact because everything it conditions on is.
    """
    return leading_true(drafts == target_tokens[:, :-1])


def tolerance_accept(guesses: Tensor, outputs: Tensor, *, rtol: float, atol: float) -> Tensor:
    """Prefix rule for continuous values: a guess passes when the update left it (nearly) unchanged.

    Args:
        guesses: (B, D, *F) values fed to the model at positions n .. n+D-1.
        outputs: (B, D+1, *F) updated values at positions n .. n+D.
        rtol, atol: a guess passes when ``|guess - output| <= atol + rtol * |output|`` everywhere.
            With both zero the committed values are exactly the sequential solution.
    Returns:
        (B,) number of accepted guesses; commit ``outputs[:, :accepted+1]``.
    """
    head = outputs[:, :-1]
    close = (guesses - head).abs() <= atol + rtol * head.abs()  # (B, D, *F)
    return leading_true(close.flatten(2).all(dim=-1))


def relative_residual(guesses: Tensor, outputs: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-row ``mean((new - old)^2) / mean(new^2)`` over the guessed positions (STARFlow's test).

    Args:
        guesses: (B, D, *F) values fed to the model.
        outputs: (B, D+1, *F) updated values; the last one has no guess and is left out.
        valid: (B, D) which guessed positions count (a window may run past the end of the
            sequence); None counts all of them.
    Returns:
        (B,) residual over the counted positions; 0 where none is counted (or the window is empty).

    Example: guesses [[1], [5]] and outputs [[2], [5], [9]] give (1^2 + 0^2) / (2^2 + 5^2) = 1/29;
    with ``valid = [[True, False]]`` only the first position counts: 1/4.
    """
    new = outputs[:, :-1].flatten(2)  # (B, D, K)
    change = (new - guesses.flatten(2)).pow(2)  # (B, D, K)
    size = new.pow(2)  # (B, D, K)
    if valid is not None:
        mask = valid[..., None].to(new.dtype)  # (B, D, 1)
        change, size = change * mask, size * mask
    return change.sum((1, 2)) / size.sum((1, 2)).clamp_min(torch.finfo(new.dtype).tiny)


def take_positions(x: Tensor, index: Tensor) -> Tensor:
    """Gather per row: ``x[b, index[b, j], ...]`` for x (B, T, *F) and index (B, J); returns (B, J, *F)."""
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, expanded)


def segment_accept(residual: Tensor, sweeps: Tensor, *, tolerance: float, max_sweeps: int, width: int) -> Tensor:
    """Gauss-Seidel-over-Jacobi rule: keep iterating a segment, then commit all of it at once.

    Args:
        residual: (B,) relative residual of the sweep just made.
        sweeps: (B,) sweeps made on the current segment, this one included.
        tolerance: commit once the residual is at or below it.
        max_sweeps: commit after this many sweeps whatever the residual.
        width: values in the segment.
    Returns:
        (B,) number of values to commit: ``width`` or 0 (keep iterating).
    """
    done = (residual <= tolerance) | (sweeps >= max_sweeps)
    return torch.where(done, width, 0)


def speculative_accept(
    drafts: Tensor,
    p_draft: Tensor,
    p_target: Tensor,
    generator: Randomness,
    verifiable: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Speculative sampling over a window (SJD, arXiv 2410.01699, eq. 4; Leviathan et al. 2023).

    Draft ``i`` is accepted with probability ``min(1, p_target[i, d_i] / p_draft[i, d_i])``,
    left to right, until the first rejection. The rejected position is resampled from
    ``normalize(max(p_target - p_draft, 0))`` (the recovered token); if all drafts pass, a
    bonus token is sampled from the last target distribution. The committed tokens are then
    distributed exactly as sequential sampling from ``p_target``, whatever ``p_draft`` is,
    provided each draft was drawn from its ``p_draft``.

    Args:
        drafts: (B, D) draft tokens.
        p_draft: (B, D, V) distribution each draft was drawn from (one-hot for a fixed draft).
        p_target: (B, D+1, V) target distributions at the D draft positions and one more.
        generator: source of randomness.
        verifiable: (B, D) False for drafts that may not be tested (e.g. SJD2's drafts whose
            context is still noisy): acceptance stops there and that position is drawn from
            ``p_target`` itself, as sequential sampling would. None: every draft is verifiable.
    Returns:
        accepted: (B,) number of accepted drafts.
        next_token: (B,) the recovered or bonus token at position ``accepted``.
    """
    b, d = drafts.shape
    index = drafts[..., None]  # (B, D, 1)
    target_at_draft = p_target[:, :d].gather(-1, index).squeeze(-1)  # (B, D)
    draft_at_draft = p_draft.gather(-1, index).squeeze(-1).to(target_at_draft.dtype)  # (B, D)
    u = uniform((b, d), target_at_draft, generator)
    # u < p/q, written without the division; a draft the target cannot produce is always rejected.
    passed = (u * draft_at_draft < target_at_draft) & (target_at_draft > 0)
    if verifiable is not None:
        passed &= verifiable
        p_draft = p_draft * verifiable[..., None]  # an untested slot's residual is p_target itself
    accepted = leading_true(passed)  # (B,)

    # Residual distribution at every position; the bonus slot D has no draft, so it is p_target.
    p_draft_padded = torch.cat([p_draft.to(p_target.dtype), p_target.new_zeros(b, 1, p_target.shape[-1])], dim=1)
    rows = torch.arange(b, device=drafts.device)
    target_row = p_target[rows, accepted]  # (B, V)
    residual = (target_row - p_draft_padded[rows, accepted]).clamp_min(0.0)  # (B, V)
    # A rejection with p_target <= p_draft everywhere has probability zero; guard rounding.
    empty = residual.sum(-1, keepdim=True) <= 0
    residual = torch.where(empty, target_row, residual)
    next_token = sample(residual, generator)  # (B,)
    return accepted, next_token


def candidates_accept(
    candidates: Tensor, p_target: Tensor, generator: Randomness
) -> tuple[Tensor, Tensor, Tensor]:
    """Lossless speculative sampling over several fixed draft sequences per row (one pass).

    Each row has ``R`` candidate sequences, each verified in its own model row, so
    ``p_target[b, i, t]`` is the target at slot ``t`` after the row's prefix and candidate ``i``'s
    first ``t`` tokens. Walking down the slots, the candidates still alive share the accepted
    prefix, hence one target ``p``; their distinct next tokens ``d_1, d_2, ...`` are tried in
    candidate order, ``d_k`` accepted with probability ``p(d_k) / (1 - p(d_1) - ... - p(d_{k-1}))``.
    That gives ``P(d_k) = p(d_k)``; if all are rejected the token is drawn from ``p`` with the tried
    tokens removed, so every committed token follows ``p`` exactly (recursive rejection sampling
    for fixed drafts). Candidates must be fixed: not drawn with this pass's randomness.

    Vectorised over rows and candidates; the loop runs over the D slots with no host sync.

    Args:
        candidates: (B, R, D) draft tokens.
        p_target: (B, R, D+1, V) each candidate row's target distributions.
        generator: source of randomness.
    Returns:
        winner: (B,) a candidate holding the accepted prefix (the lowest index).
        accepted: (B,) drafts accepted.
        next_token: (B,) the token drawn at slot ``accepted``.
    """
    b, r, d = candidates.shape
    device, vocab = p_target.device, p_target.shape[-1]
    u = uniform((b, d, r), p_target, generator)  # one number per distinct token tried
    rows = torch.arange(b, device=device)
    earlier = torch.ones(r, r, dtype=torch.bool, device=device).tril(-1)  # [i, j]: j < i
    alive = torch.ones(b, r, dtype=torch.bool, device=device)  # (B, R) candidates holding the accepted prefix
    running = torch.ones(b, dtype=torch.bool, device=device)  # (B,) rows still accepting
    accepted = torch.zeros(b, dtype=torch.long, device=device)
    removed = torch.zeros(b, vocab, dtype=torch.bool, device=device)  # tokens tried and rejected at the stop
    for t in range(d):
        first = alive.long().argmax(1)  # (B,) the lowest alive candidate: its target is the shared one
        p = p_target[rows, first, t]  # (B, V)
        tokens = candidates[:, :, t]  # (B, R)
        repeat = (tokens[:, :, None] == tokens[:, None, :]) & alive[:, None, :] & earlier  # (B, R, R)
        owner = alive & ~repeat.any(-1)  # (B, R) first alive candidate proposing each distinct token
        mass = p.gather(1, tokens) * owner  # (B, R) p(d_k) at owners, 0 elsewhere
        before = 1.0 - (mass.cumsum(1) - mass)  # (B, R) mass left when d_k is tried
        rank = (owner.long().cumsum(1) - 1).clamp_min(0)  # (B, R) k, the try index of each owner
        passed = owner & (u[:, t].gather(1, rank) * before < mass)  # (B, R)
        hit = passed.any(1) & running  # (B,)
        chosen = tokens.gather(1, passed.long().argmax(1, keepdim=True))  # (B, 1) the first accepted token
        stop = running & ~hit
        spare = torch.where(owner, tokens, vocab)  # (B, R) non-owners go to a spare column
        tried = torch.zeros(b, vocab + 1, dtype=torch.bool, device=device).scatter_(1, spare, True)[:, :vocab]
        removed = torch.where(stop[:, None], tried, removed)  # (B, V)
        alive = torch.where(hit[:, None], alive & (tokens == chosen), alive)
        accepted += hit.long()
        running &= hit
    winner = alive.long().argmax(1)  # (B,)
    final = p_target[rows, winner, accepted]  # (B, V)
    return winner, accepted, sample(final.masked_fill(removed, 0.0), generator)


def maximal_coupling(p_target: Tensor, drafts: Tensor, p_draft: Tensor, generator: Randomness) -> Tensor:
    """A draw from ``p_target`` that keeps each old draft as often as possible (maximal coupling).

    SJD-PAC's adaptive continuation and MC-SJD's maximal variant (ALGORITHMS.md sections 9, 11):
    the old draft ``d ~ p_draft`` is kept with probability ``min(1, p_target(d) / p_draft(d))``,
    otherwise the token is drawn from ``normalize(max(p_target - p_draft, 0))``. The result follows
    ``p_target`` exactly and equals ``d`` with probability ``1 - TV(p_draft, p_target)``, the most
    any coupling allows; it is a draft whose law is ``p_target`` (not ``p_draft``).

    Args:
        p_target: (B, W, V) the new law.
        drafts: (B, W) old drafts, each drawn from its ``p_draft``.
        p_draft: (B, W, V) their laws.
        generator: randomness.
    Returns:
        (B, W) the new drafts.
    """
    index = drafts[..., None]  # (B, W, 1)
    q = p_draft.to(p_target.dtype)
    target_at, draft_at = p_target.gather(-1, index).squeeze(-1), q.gather(-1, index).squeeze(-1)  # (B, W)
    keep = uniform(drafts.shape, p_target, generator) * draft_at < target_at
    residual = (p_target - q).clamp_min(0.0)  # (B, W, V)
    # Where p_target <= p_draft everywhere a rejection has probability zero; draw from p_target to guard rounding.
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_target)
    return torch.where(keep, drafts, sample(residual, generator))


def sibling_law(p_target: Tensor, p_draft: Tensor, siblings: Tensor) -> tuple[Tensor, Tensor]:
    """The law of recursive rejection sampling over drawn siblings (SpecInfer; SJD-PAC's tree rule).

    Siblings ``x_1 .. x_K`` are alternatives for one position, sibling ``k`` drawn from
    ``p_draft[k]`` given the siblings before it: independent draws, or draws without replacement
    (``p_draft[k]`` is then ``q`` with the earlier siblings removed and renormalised). They are tried in order against the distribution in force, ``r_1 = p_target``:
    ``x_k`` is accepted with probability ``min(1, r_k(x_k) / q_k(x_k))``; after a rejection the
    distribution in force becomes ``r_{k+1} = normalize(max(r_k - q_k, 0))``; if all K are rejected
    the token is drawn from ``r_{K+1}``. Each step is speculative sampling of ``r_k`` with ``q_k``,
    so the token follows ``p_target`` exactly (tested by exact enumeration).

    Args:
        p_target: (B, V) the target at the position.
        p_draft: (B, K, V) the distribution each sibling was drawn from.
        siblings: (B, K) the drawn siblings.
    Returns:
        accept: (B, K) probability that sibling ``k`` is accepted once the ones before it were rejected.
        residual: (B, K + 1, V) the distribution in force before each sibling, then the fallback's.
    """
    k_count = siblings.shape[1]
    residual, accept = [p_target], []
    for k in range(k_count):
        r, q, x = residual[-1], p_draft[:, k].to(p_target.dtype), siblings[:, k : k + 1]
        r_x, q_x = r.gather(1, x).squeeze(1), q.gather(1, x).squeeze(1)  # (B,)
        # a sibling its own q could not draw is never accepted (that event has probability zero)
        accept.append(torch.where(q_x > 0, (r_x / q_x.clamp_min(torch.finfo(r.dtype).tiny)).clamp(max=1.0), 0.0))
        rest = (r - q).clamp_min(0.0)  # (B, V)
        total = rest.sum(-1, keepdim=True)
        # A rejection with r <= q everywhere has probability zero; keep r to guard rounding.
        residual.append(torch.where(total > 0, rest / total.clamp_min(torch.finfo(r.dtype).tiny), r))
    return torch.stack(accept, 1), torch.stack(residual, 1)


def siblings_accept(p_target: Tensor, p_draft: Tensor, siblings: Tensor, generator: Randomness) -> tuple[Tensor, Tensor]:
    """Draw the token at a position with drawn siblings by :func:`sibling_law`.

    Args:
        p_target: (B, V) the target at the position.
        p_draft: (B, K, V) the distribution each sibling was drawn from, given the ones before it.
        siblings: (B, K) the drawn siblings.
        generator: source of randomness.
    Returns:
        chosen: (B,) the accepted sibling's index, or K where every sibling was rejected.
        token: (B,) the token: the accepted sibling, or a draw from the last residual.
    """
    b, k_count = siblings.shape
    accept, residual = sibling_law(p_target, p_draft, siblings)
    passed = uniform((b, k_count), accept, generator) < accept  # (B, K)
    chosen = torch.where(passed.any(1), passed.long().argmax(1), k_count)  # (B,)
    fallback = sample(residual[:, -1], generator)  # (B,)
    token = torch.where(chosen < k_count, siblings.gather(1, chosen.clamp(max=k_count - 1)[:, None]).squeeze(1), fallback)
    return chosen, token


@dataclass(frozen=True)
class BinTolerance:
    """LOSSY: a draft is settled when it equals the new output, or both are bin tokens at most
    ``max_moved`` bins apart.

    Bin tokens are ``first .. first + count - 1`` in the order of the values they stand for (token
    ``first + i`` is bin ``i``). Any other token (an end token, text) must match exactly.

    Args:
        first: the first bin token.
        count: number of bin tokens.
        max_moved: bins a token may still move between sweeps and count as settled; 0 is the exact
            test on bin tokens.
    """

    first: int
    count: int
    max_moved: int

    def __post_init__(self) -> None:
        for name in ("first", "count", "max_moved"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "count" else 0):
                raise ValueError(f"BinTolerance.{name} must be an int >= {1 if name == 'count' else 0}, got {value!r}")

    def __call__(self, old: Tensor, new: Tensor) -> Tensor:
        """(B, D) True where draft ``old`` (B, D) counts as settled given the sweep's output ``new`` (B, D)."""
        in_range = (old >= self.first) & (old < self.first + self.count) & (new >= self.first) & (new < self.first + self.count)
        close = in_range & ((old - new).abs() <= self.max_moved)
        return close | torch.eq(old, new)
