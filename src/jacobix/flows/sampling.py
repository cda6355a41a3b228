"""TarFlow sampling on the engine: sequential (KV cache), whole-block Jacobi and GS-Jacobi.

Inverting one meta-block is the lower-triangular fixed point (ALGORITHMS.md section 6)::

    x_0 = z_0,    x_t = z_t * exp(a_{t-1}(x_<=t-1)) + b_{t-1}(x_<=t-1)

so each block is one :func:`jacobix.core.engine.solve` call with a :class:`FlowBlockProblem`: state
values are patches (B, T, F) in the block's own token order, ``x_0`` starts committed, and a
sweep feeds ``[x_{n-1}] + guesses`` through the block's causal transformer with a
position-indexed KV cache. Methods differ only in the window and the acceptance rule:

- sequential: window 1 (one position per pass; the reference);
- Jacobi: window T with :func:`~jacobix.core.acceptance.tolerance_accept` (rtol = atol = 0 gives
  the sequential sample);
- GS-Jacobi (arXiv 2505.12849): segments of width W, window W, committed whole by
  :func:`~jacobix.core.acceptance.segment_accept` once the
  :func:`~jacobix.core.acceptance.relative_residual` is under a tolerance
  or the sweep cap is reached.

Blocks are inverted last to first, each with its own :class:`BlockPlan`. Guidance runs the
conditional and unconditional rows in one batch on the same guesses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

from jacobix.core.acceptance import leading_true, relative_residual, segment_accept, take_positions, tolerance_accept
from jacobix.core.cache import KVCache
from jacobix.core.engine import Acceptance, Drafts, FixedPointState, SolveStats, solve
from jacobix.flows.tarflow import MetaBlock, TarFlow, denoise

Mode = Literal["sequential", "jacobi", "gs"]
Init = Literal["z", "zeros"]
GUESS_BOUND = 1e4  # far beyond any image value; only diverging guesses are clipped
MODES: tuple[str, ...] = ("sequential", "jacobi", "gs")
INITS: tuple[str, ...] = ("z", "zeros")


@dataclass(frozen=True, kw_only=True)
class BlockPlan:
    """How to invert one meta-block.

    Attributes:
        mode: ``sequential``, ``jacobi`` (whole block, prefix rule) or ``gs`` (segments).
        segments: GS-Jacobi segments over the T-1 positions after ``x_0``.
        max_sweeps: GS-Jacobi sweep cap per segment; 0 means the segment width (which is exact).
        tolerance: GS-Jacobi relative residual ``mean((new-old)^2)/mean(new^2)`` to commit at.
        rtol, atol: Jacobi prefix rule; both 0 reproduces sequential sampling.
        init: initial guess for fresh positions: ``z`` (the block input) or ``zeros``.
    """

    mode: Mode = "gs"
    segments: int = 1
    max_sweeps: int = 0
    tolerance: float = 1e-4
    rtol: float = 0.0
    atol: float = 0.0
    init: Init = "z"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"BlockPlan.mode must be one of {MODES}, got {self.mode!r}")
        if self.init not in INITS:
            raise ValueError(f"BlockPlan.init must be one of {INITS}, got {self.init!r}")
        if self.segments < 1 or self.max_sweeps < 0:
            raise ValueError(f"BlockPlan: segments must be >= 1 and max_sweeps >= 0, got {self.segments}, {self.max_sweeps}")
        if min(self.tolerance, self.rtol, self.atol) < 0:
            raise ValueError("BlockPlan: tolerance, rtol and atol must be >= 0")

    def window(self, num_patches: int) -> int:
        """Engine window for a block of ``num_patches`` positions (x_0 is committed up front)."""
        if self.mode == "sequential":
            return 1
        if self.mode == "jacobi":
            return num_patches
        return self.segment_width(num_patches)

    def segment_width(self, num_patches: int) -> int:
        return math.ceil((num_patches - 1) / min(self.segments, num_patches - 1))


@dataclass(frozen=True, kw_only=True)
class FlowGuidance:
    """Classifier-free guidance on (a, b): ``a += w * (a - a_uncond)``, same for b.

    Attributes:
        scale: w; 0 is the conditional model alone.
        annealed: grow w linearly along the block, ``w * (t + 1) / (T - 1)`` (ml-tarflow's option).
    """

    scale: float
    annealed: bool = False


class FlowBlockProblem:
    """The engine's step, rule and drafts for inverting one TarFlow meta-block.

    The problem tracks ``cache_valid`` (B,): cache slots below it hold keys and values computed
    from committed patches. A rule that commits outputs which differ from the guesses fed (any
    tolerance above 0) leaves stale slots; the next sweep then re-feeds the committed patches
    from ``cache_valid`` on, so later positions never attend to a guess.

    Args:
        block: the meta-block.
        cache: its KV cache, B rows (2B with guidance: conditional rows first).
        z: (B, T, F) the block's input, in the block's order.
        labels: (B,) classes or None.
        plan: window, rule and initial guess.
        guidance: classifier-free guidance, or None.
    """

    def __init__(self, block: MetaBlock, cache: KVCache, *, z: Tensor, labels: Tensor | None, plan: BlockPlan, guidance: FlowGuidance | None) -> None:
        if guidance is not None and labels is None:
            raise ValueError("guidance needs labels: pass the classes to sample, or guidance=None")
        self.block, self.cache, self.z, self.labels = block, cache, z, labels
        self.plan, self.guidance = plan, guidance
        self.num_patches = z.shape[1]
        self.cache_valid = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        self._pending_valid = self.cache_valid

    def affine(self, inputs: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Guided raw (a, b), each (B, L, F), for inputs (B, L, F) at positions (B, L)."""
        if self.guidance is None:
            return self.block.affine(inputs, self.labels, positions, self.cache)
        both = torch.cat([inputs, inputs])  # (2B, L, F)
        uncond = torch.full_like(self.labels, -1)
        a, b = self.block.affine(both, torch.cat([self.labels, uncond]), torch.cat([positions, positions]), self.cache)
        (a_c, a_u), (b_c, b_u) = a.chunk(2), b.chunk(2)  # (B, L, F) each
        w = self.guidance.scale
        if self.guidance.annealed:
            w = w * ((positions + 1).clamp(max=self.num_patches - 1) / (self.num_patches - 1))[..., None]  # (B, L, 1)
        return a_c + w * (a_c - a_u), b_c + w * (b_c - b_u)

    def sweep(self, state: FixedPointState, drafts: Drafts) -> Acceptance:
        n = state.length  # (B,)
        d = drafts.values.shape[1]
        canvas = self._canvas(state, drafts.values)  # (B, C, F)
        start = torch.minimum(self.cache_valid, n - 1)  # re-feed stale committed slots
        last = torch.minimum(n + d - 1, torch.full_like(n, self.num_patches - 2))  # last input whose output we need
        span = int(torch.where(state.done, 1, last - start + 1).max())
        positions = start[:, None] + torch.arange(span, device=n.device)  # (B, L)
        inputs = take_positions(canvas, positions.clamp(max=canvas.shape[1] - 1))  # (B, L, F)
        # A diverging guess can overflow exp(a); its non-finite keys would poison every query
        # (masked attention still multiplies 0 * inf), so guesses are kept finite.
        inputs = inputs.nan_to_num(0.0).clamp(-GUESS_BOUND, GUESS_BOUND)
        a, b = self.affine(inputs, positions)  # (B, L, F) each
        pick = ((n - 1 - start)[:, None] + torch.arange(d + 1, device=n.device)).clamp(max=span - 1)  # (B, D+1)
        targets = n[:, None] + torch.arange(d + 1, device=n.device)  # (B, D+1) positions being solved
        z = take_positions(self.z, targets.clamp(max=self.num_patches - 1))  # (B, D+1, F)
        values = z * torch.exp(take_positions(a, pick)) + take_positions(b, pick)  # (B, D+1, F)
        n_commit, n_accepted = self._rule(state, drafts.values, values, targets < self.num_patches)
        exact = leading_true((drafts.values == values[:, :-1]).flatten(2).all(-1))  # (B,)
        self._pending_valid = n + exact
        return Acceptance(n_commit=n_commit, values=values, proposals=Drafts(values), n_accepted=n_accepted)

    def _rule(self, state: FixedPointState, guesses: Tensor, values: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """(n_commit, n_accepted), each (B,)."""
        if self.plan.mode != "gs":
            accepted = tolerance_accept(guesses, values, rtol=self.plan.rtol, atol=self.plan.atol)
            return accepted + 1, accepted
        width = values.shape[1]
        residual = relative_residual(guesses, values, valid[:, :-1])
        cap = self.plan.max_sweeps or width
        n_commit = segment_accept(residual, state.sweeps_on_window + 1, tolerance=self.plan.tolerance, max_sweeps=cap, width=width)
        return n_commit, torch.where(n_commit > 0, width - 1, 0)

    def _canvas(self, state: FixedPointState, guesses: Tensor) -> Tensor:
        """Committed values with the guesses written after each row's prefix: (B, C, F)."""
        positions = state.window_positions(guesses.shape[1])  # (B, D)
        canvas = state.values.clone()
        index = positions[..., None].expand_as(guesses)
        return canvas.scatter_(1, index, guesses.to(canvas.dtype))

    def draft(self, state: FixedPointState, carried: Drafts | None, fresh: Tensor) -> Drafts:
        positions = state.window_positions(fresh.shape[1])  # (B, D)
        if self.plan.init == "z":
            init = take_positions(self.z, positions.clamp(max=self.num_patches - 1))  # (B, D, F)
        else:
            init = self.z.new_zeros((*positions.shape, self.z.shape[-1]))
        if carried is None:
            return Drafts(init)
        return Drafts(torch.where(fresh[..., None], init, carried.values))

    def rollback(self, state: FixedPointState) -> None:
        self.cache_valid = torch.minimum(self._pending_valid, state.length)


@dataclass
class FlowSample:
    """Result of :func:`sample_tarflow`.

    Attributes:
        images: (B, C, H, W) samples (denoised unless asked otherwise).
        raw: (B, C, H, W) samples before the denoising step.
        stats: one :class:`~jacobix.core.engine.SolveStats` per block, in block order (not sampling order).
    """

    images: Tensor
    raw: Tensor
    stats: list[SolveStats]

    @property
    def forward_passes(self) -> int:
        return sum(s.forward_passes for s in self.stats)


def invert_block(
    block: MetaBlock, z: Tensor, labels: Tensor | None, plan: BlockPlan, *, guidance: FlowGuidance | None = None, record: bool = False
) -> tuple[Tensor, SolveStats]:
    """Invert one meta-block with the engine.

    Args:
        block: the meta-block.
        z: (B, T, F) its output in image patch order.
        labels: (B,) classes or None.
        plan: how to solve it.
        guidance: classifier-free guidance or None.
        record: keep the engine's per-sweep trajectory (for convergence curves).
    Returns:
        x (B, T, F) in image patch order, and the solve's statistics.
    """
    z = block.permute(z)
    bsz, t, _ = z.shape
    window = plan.window(t)
    rows = bsz if guidance is None else 2 * bsz
    cache = block.new_cache(rows, 2 * t + window + 2)
    problem = FlowBlockProblem(block, cache, z=z, labels=labels, plan=plan, guidance=guidance)
    ones = torch.ones(bsz, dtype=torch.long, device=z.device)
    state = FixedPointState.start(z[:, :1], ones, torch.full_like(ones, t), window)  # x_0 = z_0
    stats = solve(problem, state, window=window, record=record)
    return block.permute(state.values[:, :t]), stats


@torch.no_grad()
def sample_tarflow(
    model: TarFlow,
    noise: Tensor,
    labels: Tensor | None = None,
    *,
    schedule: Sequence[BlockPlan],
    guidance: FlowGuidance | None = None,
    denoise_step: bool = True,
    record: bool = False,
) -> FlowSample:
    """Sample TarFlow: invert the blocks last to first, then the score-based denoising step.

    Args:
        model: the flow.
        noise: (B, T, F) standard normal latents (scaled by the prior ``var``).
        labels: (B,) classes for a class-conditional model, else None.
        schedule: one :class:`BlockPlan` per block, in block order.
        guidance: classifier-free guidance (needs labels), or None.
        denoise_step: apply the final denoising step (outside the engine: one gradient step).
        record: keep each solve's trajectory.
    Returns:
        the samples and per-block statistics.
    """
    if len(schedule) != len(model.blocks):
        raise ValueError(f"schedule has {len(schedule)} plans but the model has {len(model.blocks)} blocks: one plan per block")
    if noise.shape[1:] != model.var.shape:
        raise ValueError(f"noise must be (B, {model.config.num_patches}, {model.config.patch_dim}), got {tuple(noise.shape)}")
    if guidance is not None and guidance.scale and not model.config.num_classes:
        raise ValueError("guidance needs a class-conditional model; pass guidance=None")
    x = noise.to(model.var.dtype) * model.var.sqrt()  # (B, T, F)
    stats: list[SolveStats] = [None] * len(model.blocks)  # type: ignore[list-item]
    for index in reversed(range(len(model.blocks))):
        x, stats[index] = invert_block(model.blocks[index], x, labels, schedule[index], guidance=guidance, record=record)
    raw = model.unpatchify(x)
    images = denoise(model, raw, labels) if denoise_step else raw
    return FlowSample(images=images, raw=raw, stats=stats)


def uniform_schedule(num_blocks: int, plan: BlockPlan) -> tuple[BlockPlan, ...]:
    """The same plan for every block (``BlockPlan(mode="sequential")`` is the reference sampler)."""
    return (plan,) * num_blocks


__all__ = [
    "BlockPlan", "FlowBlockProblem", "FlowGuidance", "FlowSample", "invert_block",
    "sample_tarflow", "uniform_schedule",
]
