"""TarFlow sampling on the engine: sequential (KV cache), whole-block Jacobi and GS-Jacobi.

Inverting one meta-block is the lower-triangular fixed point (docs/flows.md)::

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
conditional and unconditional rows in one batch on the same guesses; ml-tarflow's sampling
options are :class:`FlowGuidance` fields (annealing, attention temperature, guiding only a or b)
and ``denoise_scale``.
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
from jacobix.flows.tarflow import MetaBlock, TarFlow, check_step_scale, denoise

Mode = Literal["sequential", "jacobi", "gs"]
Init = Literal["z", "zeros"]
Guide = Literal["ab", "a", "b"]
GUESS_BOUND = 1e4  # far beyond any image value; only diverging guesses are clipped
MODES: tuple[str, ...] = ("sequential", "jacobi", "gs")
INITS: tuple[str, ...] = ("z", "zeros")
GUIDES: tuple[str, ...] = ("ab", "a", "b")


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
    """Guidance on (a, b) with a second, unconditional pass: ``a += w * (a - a_uncond)``, same for b.

    The unconditional pass uses the mean class embedding (label -1) and, when
    ``attention_temperature`` is not 1, divides every attention logit by it. With a temperature
    the guidance needs no classes: for an unconditional model (or ``labels=None``) both passes see
    the same input and differ only in the temperature (ml-tarflow's unconditional guidance).

    Attributes:
        scale: w; 0 is the conditional model alone.
        annealed: grow w linearly along the block, ``w * (t + 1) / (T - 1)`` for the value at
            position t + 1 (ml-tarflow's ``annealed_guidance``).
        attention_temperature: temperature of the unconditional pass's attention (ml-tarflow's
            ``attn_temp``; it suggests 0.5 or 1.5); 1 leaves that pass as the model is.
        guide: which of the affine parameters to guide: ``ab`` (both), ``a`` or ``b``
            (ml-tarflow's ``guide_what``); the other keeps its conditional value.
    """

    scale: float
    annealed: bool = False
    attention_temperature: float = 1.0
    guide: Guide = "ab"

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale):
            raise ValueError(f"FlowGuidance.scale must be finite, got {self.scale}")
        if not (math.isfinite(self.attention_temperature) and self.attention_temperature > 0):
            raise ValueError(f"FlowGuidance.attention_temperature must be finite and > 0 (1 = unchanged), got {self.attention_temperature}")
        if self.guide not in GUIDES:
            raise ValueError(f"FlowGuidance.guide must be one of {GUIDES}, got {self.guide!r}")

    @property
    def needs_labels(self) -> bool:
        """Without a temperature the unconditional pass differs from the conditional one only by the labels."""
        return self.attention_temperature == 1.0


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
        if guidance is not None and labels is None and guidance.needs_labels:
            raise ValueError(
                "guidance needs labels: pass the classes to sample, guide by attention temperature "
                "(FlowGuidance(scale=..., attention_temperature=...)), or pass guidance=None"
            )
        self.block, self.cache, self.z, self.labels = block, cache, z, labels
        self.plan, self.guidance = plan, guidance
        self.num_patches = z.shape[1]
        self.cache_valid = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        self._pending_valid = self.cache_valid

    def affine(self, inputs: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Guided raw (a, b), each (B, L, F), for inputs (B, L, F) at positions (B, L)."""
        guidance = self.guidance
        if guidance is None:
            return self.block.affine(inputs, self.labels, positions, self.cache)
        rows = inputs.shape[0]
        both = torch.cat([inputs, inputs])  # (2B, L, F): conditional rows, then unconditional ones
        labels = None if self.labels is None else torch.cat([self.labels, torch.full_like(self.labels, -1)])
        temperature = None
        if guidance.attention_temperature != 1.0:
            temperature = inputs.new_ones(2 * rows)
            temperature[rows:] = guidance.attention_temperature  # (2B,)
        a, b = self.block.affine(both, labels, torch.cat([positions, positions]), self.cache, temperature=temperature)
        (a_c, a_u), (b_c, b_u) = a.chunk(2), b.chunk(2)  # (B, L, F) each
        w = guidance.scale
        if guidance.annealed:  # in the model's dtype: a float32 weight would round a float64 model's step
            step = (positions + 1).clamp(max=self.num_patches - 1).to(a_c.dtype) / (self.num_patches - 1)  # (B, L)
            w = w * step[..., None]  # (B, L, 1)
        a = a_c + w * (a_c - a_u) if "a" in guidance.guide else a_c
        b = b_c + w * (b_c - b_u) if "b" in guidance.guide else b_c
        return a, b

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
    denoise_scale: float = 1.0,
    record: bool = False,
) -> FlowSample:
    """Sample TarFlow: invert the blocks last to first, then the score-based denoising step.

    Args:
        model: the flow.
        noise: (B, T, F) standard normal latents (scaled by the prior ``var``).
        labels: (B,) classes for a class-conditional model, else None.
        schedule: one :class:`BlockPlan` per block, in block order.
        guidance: classifier-free guidance (needs labels), attention-temperature guidance (any
            model; see :class:`FlowGuidance`), or None.
        denoise_step: apply the final denoising step (outside the engine: one gradient step).
        denoise_scale: multiplier of that step's size (ml-tarflow's ``self_denoising_lr``): 1 is
            the Tweedie step, 0 none; must be >= 0.
        record: keep each solve's trajectory.
    Returns:
        the samples and per-block statistics.
    """
    if isinstance(schedule, (str, BlockPlan)) or not all(isinstance(plan, BlockPlan) for plan in schedule):
        raise ValueError("schedule must be a sequence of BlockPlan, one per block (see uniform_schedule)")
    if len(schedule) != len(model.blocks):
        raise ValueError(f"schedule has {len(schedule)} plans but the model has {len(model.blocks)} blocks: one plan per block")
    if noise.shape[1:] != model.var.shape:
        raise ValueError(f"noise must be (B, {model.config.num_patches}, {model.config.patch_dim}), got {tuple(noise.shape)}")
    if guidance is not None and guidance.scale and guidance.needs_labels and not model.config.num_classes:
        raise ValueError(
            "classifier-free guidance needs a class-conditional model; for an unconditional one guide by "
            "attention temperature (FlowGuidance(scale=..., attention_temperature=...)) or pass guidance=None"
        )
    check_step_scale(denoise_scale)
    _check_inputs(model, noise, labels, denoise_step=denoise_step, record=record)
    x = noise.to(model.var.dtype) * model.var.sqrt()  # (B, T, F)
    stats: list[SolveStats] = [None] * len(model.blocks)  # type: ignore[list-item]
    for index in reversed(range(len(model.blocks))):
        x, stats[index] = invert_block(model.blocks[index], x, labels, schedule[index], guidance=guidance, record=record)
    raw = model.unpatchify(x)
    images = denoise(model, raw, labels, step_scale=denoise_scale) if denoise_step else raw
    return FlowSample(images=images, raw=raw, stats=stats)


def _check_inputs(model: TarFlow, noise: Tensor, labels: Tensor | None, *, denoise_step: bool, record: bool) -> None:
    """Refuse non-finite noise, labels of the wrong kind or range, and non-boolean switches."""
    if not isinstance(denoise_step, bool) or not isinstance(record, bool):
        raise ValueError(f"denoise_step and record must be True or False, got {denoise_step!r}, {record!r}")
    if noise.shape[0] < 1 or not bool(torch.isfinite(noise).all()):
        raise ValueError("noise must hold at least one sample and be finite (no NaN or infinity)")
    if labels is None:
        return
    classes = model.config.num_classes
    if not classes:
        raise ValueError("labels were given to an unconditional TarFlow; pass labels=None")
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class ids, got {getattr(labels, 'dtype', type(labels))}")
    if labels.shape != (noise.shape[0],) or int(labels.min()) < -1 or int(labels.max()) >= classes:
        raise ValueError(f"labels must be ({noise.shape[0]},) class ids in [0, {classes}) (or -1, the null class), "
                         f"got shape {tuple(labels.shape)}")


def uniform_schedule(num_blocks: int, plan: BlockPlan) -> tuple[BlockPlan, ...]:
    """The same plan for every block (``BlockPlan(mode="sequential")`` is the reference sampler)."""
    return (plan,) * num_blocks


__all__ = [
    "BlockPlan", "FlowBlockProblem", "FlowGuidance", "FlowSample", "invert_block",
    "sample_tarflow", "uniform_schedule",
]
