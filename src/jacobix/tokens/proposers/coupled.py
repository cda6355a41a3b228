"""SJD with coupled proposals: each position re-drafts with the same noise in every sweep.

Plain SJD re-samples every unaccepted draft from the newest target with fresh randomness, so a
window never settles where the model is uncertain: the drafts keep changing under one another.
Here each position ``j`` of each row owns one exponential noise vector ``E_j`` (V,), drawn once,
and every sweep proposes ``d_j = argmax_v p_j(v) / E_j(v)`` (the exponential race, i.e. the
Gumbel-max trick). While the context of ``j`` stays the same, so does its draft; the window
iterates like greedy Jacobi on the noise-fixed map and converges.

It stays lossless. The draft tested at ``j`` is the race over the target of the previous sweep,
``p_s``, and ``E_j`` is independent of everything that decided ``p_s`` and when ``j`` is tested
(both depend on positions ``< j`` only, and proposals at ``j`` only influence positions ``> j``),
so ``d_j ~ p_s`` exactly, which is what the speculative rule ``min(1, p_t(d_j) / p_s(d_j))``
needs. Rejected, recovered and bonus tokens use fresh randomness as usual, and a position's
noise is never used again once it is committed.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import Tensor

from jacobix.tokens.problem import CausalLM, Guidance, TokenProblem
from jacobix.tokens.proposers.basic import DraftInit
from jacobix.core.engine import Acceptance, Drafts, FixedPointState, solve
from jacobix.tokens.generate import DecodeStats, GenerateResult
from jacobix.core.sampling import LogitsProcessor, SamplingConfig
from jacobix.core.timing import clock


class CoupledTokenProblem(TokenProblem):
    """:class:`~jacobix.tokens.problem.TokenProblem` whose proposals reuse one noise vector per position.

    Args:
        noise: (B, C, V) positive exponential noise, one vector per row and absolute position.
        *args, **kwargs: as for :class:`~jacobix.tokens.problem.TokenProblem`.
    """

    def __init__(self, *args, noise: Tensor, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.noise = noise

    def sweep(self, state: FixedPointState, drafts: Drafts) -> Acceptance:
        decision = super().sweep(state, drafts)
        p_target = decision.proposals.p_draft  # (B, W, V); None when greedy
        if p_target is None:
            return decision
        positions = state.window_positions(p_target.shape[1])  # (B, W) outputs at n .. n+D
        race = self.noise.gather(1, positions[..., None].expand(-1, -1, p_target.shape[-1]))  # (B, W, V)
        proposals = (p_target / race.to(p_target.dtype)).argmax(-1)  # (B, W)
        return dataclasses.replace(decision, proposals=Drafts(proposals, p_target))


def generate_coupled(
    model: CausalLM,
    prompts: Tensor,
    *,
    max_new_tokens: int,
    window: int,
    init: DraftInit,
    sampling: SamplingConfig,
    processors: Sequence[LogitsProcessor] = (),
    generator: torch.Generator | None = None,
    cfg_scale: float | None = None,
    negative_prompts: Tensor | None = None,
    record: bool = False,
) -> GenerateResult:
    """Coupled-proposal SJD for one-token prompts (class-conditional image models).

    Args:
        model: a :class:`~jacobix.tokens.problem.CausalLM`.
        prompts: (B, 1) prompt tokens.
        max_new_tokens, window, init, sampling, processors, generator, record: as in
            :func:`jacobix.tokens.generate` (``sampling.temperature`` must be > 0).
        cfg_scale, negative_prompts: classifier-free guidance with (B, 1) unconditional prompts.
    Returns:
        a :class:`~jacobix.tokens.generate.GenerateResult` (method "sjd-coupled").
    """
    if prompts.dim() != 2 or prompts.shape[1] != 1:
        raise ValueError(f"generate_coupled takes one-token prompts (B, 1), got {tuple(prompts.shape)}")
    if sampling.greedy:
        raise ValueError("coupled SJD samples: use temperature > 0 (greedy Jacobi needs no coupling)")
    if (cfg_scale is None) != (negative_prompts is None):
        raise ValueError("classifier-free guidance needs both cfg_scale and negative_prompts")
    if negative_prompts is not None and tuple(negative_prompts.shape) != tuple(prompts.shape):
        raise ValueError(f"negative_prompts must be (B, 1) like prompts, got {tuple(negative_prompts.shape)}")
    device = next(model.parameters()).device
    b = prompts.shape[0]
    prompt_length = torch.ones(b, dtype=torch.long, device=device)
    state = FixedPointState.start(prompts.to(device), prompt_length, prompt_length + max_new_tokens, window)
    guided = cfg_scale is not None
    guidance = None
    if guided:
        uncond_last = negative_prompts[:, -1].to(device)  # (B,)
        guidance = Guidance(scale=float(cfg_scale), position_shift=torch.zeros_like(prompt_length), last_prompt_token=uncond_last)
    cache = model.new_cache(2 * b if guided else b, state.values.shape[1])
    noise = torch.empty(b, state.values.shape[1], model.vocab_size, device=device).exponential_(generator=generator)
    problem = CoupledTokenProblem(
        model, cache, prompt_length=prompt_length, sampling=sampling, processors=processors, init=init,
        generator=generator, guidance=guidance, eos_token_id=None, noise=noise,
    )
    start = clock(device)
    with torch.inference_mode():
        problem.rollback(state)
        solved = solve(problem, state, window=window, record=record)
    elapsed = clock(device) - start
    tokens = [state.values[row, 1 : state.length[row]].cpu() for row in range(b)]
    stats = DecodeStats(
        method="sjd-coupled", window=window, forward_passes=solved.forward_passes, prefill_passes=0,
        new_tokens=[len(t) for t in tokens], committed_per_pass=solved.committed, accepted_per_pass=solved.accepted,
        active_per_pass=solved.active, wall_time_s=elapsed,
    )
    return GenerateResult(tokens=tokens, stats=stats, trajectory=solved.trajectory)
