"""Jacobi-denoising drafts (SJD2, Speculative Jacobi-Denoising, arXiv 2510.08994): a proposer for any
token model fine-tuned to read noisy input embeddings, and the noise schedule it steps along.

Every window slot carries a level ``k`` in ``0 .. K`` and, while ``k > 0``, a noisy normalised
embedding ``e`` (the engine's per-slot :attr:`~jacobix.core.engine.Drafts.state`). Before each
sweep the proposer:

- lets every carried noisy slot take one deterministic DDIM step toward ``e_hat(x)``, where ``x``
  is the token just sampled for that slot from the last sweep's next-clean-token distribution
  (:func:`ddim_step`); a slot that reaches level 0 becomes a clean draft ``x`` carrying the
  distribution it was sampled from;
- lets clean slots keep SJD's update (the sampled token and its distribution);
- fills slots that enter the window with forward-noised embeddings of their draft token, noise
  rising along the window (slot ``i`` of ``D`` enters at level ``1 + i * K // D``; the far slots
  are at level K, ``ratio_max``, nearly pure noise);
- feeds clean slots by their token embedding and noisy ones by the model's
  :meth:`NoisyInputs.inputs` (``forward(..., embeds=...)``).

Verification is SJD's speculative rule. **Lossless** (default): only the leading run of clean
slots may be tested; a prediction whose context holds a noisy slot is never used to accept a
draft or to draw the committed token, so every committed token follows the model's AR
distribution exactly (the draft at a clean slot was drawn from the distribution it carries, with
randomness that only later positions see). ``lossy=True`` is the paper's variant, an ablation:
every slot is tested, noisy ones by the token last sampled for them, against predictions whose
context may be noisy. The proposer's source is named ``sjd2-lossless`` or ``sjd2-lossy`` in
the decoding statistics. With ``levels=0`` nothing is ever noisy and the decoder is SJD.

Schedule (ours; the paper's exact one is not published). Noise is measured by the Karras
noise-to-signal ratio ``r`` (EDM's sigma), interpolated in ``r ** (1 / rho)`` from ``ratio_max``
(u = 0) to ``ratio_min`` (u = 1), and mapped to variance-preserving coefficients::

    alpha(r) = 1 / sqrt(1 + r^2),   sigma(r) = r / sqrt(1 + r^2),   e = alpha * e_hat + sigma * eps

``e_hat`` is the token embedding normalised per dimension with fixed statistics of the starting
model's code embeddings (the paper's Fig. 5: without it denoising fails). Decoding with ``K``
levels uses level ``k`` in ``1 .. K`` at ``u = (K - k) / (K - 1)`` (level K is ``ratio_max``,
nearly pure noise) and level 0 is clean (``r = 0``). Training draws ``u`` uniformly, so one
fine-tuned model serves every K.

The model side (the noisy-input embedding a fine-tuned checkpoint carries: those statistics and
a timestep MLP) belongs to the model, :mod:`jacobix.images.denoise` for the bundled image model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from jacobix.core.sampling import Randomness, per_row
from jacobix.core.engine import Drafts
from jacobix.tokens.proposers.base import Candidates, DraftSource, ProposalContext
from jacobix.tokens.proposers.basic import DraftInit, JacobiProposer
from jacobix.tokens.proposers.coupled import CoupledProposer


@dataclass(frozen=True, kw_only=True)
class NoiseSchedule:
    """Karras noise ratios, mapped to variance-preserving alpha and sigma.

    Attributes:
        ratio_min: noise-to-signal ratio of the least noisy level (u = 1).
        ratio_max: ratio of the noisiest level (u = 0); alpha there is about 1 / ratio_max.
        rho: Karras' curvature; larger packs more levels near ``ratio_min``.
    """

    ratio_min: float = 0.02
    ratio_max: float = 40.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        if not 0 < self.ratio_min < self.ratio_max or self.rho <= 0:
            raise ValueError(f"NoiseSchedule needs 0 < ratio_min < ratio_max and rho > 0, got {self}")

    def ratio(self, u: Tensor) -> Tensor:
        """Noise-to-signal ratio at ``u`` in [0, 1] (0: ratio_max, 1: ratio_min), same shape."""
        low, high = self.ratio_min ** (1 / self.rho), self.ratio_max ** (1 / self.rho)
        return (high + u * (low - high)) ** self.rho

    def level_ratios(self, levels: int) -> Tensor:
        """(levels + 1,) float64 ratios of levels ``0 .. K``: 0 (clean), then rising to ratio_max at K."""
        if levels < 0:
            raise ValueError(f"levels must be >= 0, got {levels}")
        if levels == 0:
            return torch.zeros(1, dtype=torch.float64)
        k = torch.arange(1, levels + 1, dtype=torch.float64)
        u = (levels - k) / max(levels - 1, 1)  # level K at u = 0 (noisiest)
        return torch.cat([torch.zeros(1, dtype=torch.float64), self.ratio(u)])


def alpha_sigma(ratio: Tensor) -> tuple[Tensor, Tensor]:
    """Variance-preserving coefficients of a noise-to-signal ratio: (alpha, sigma), each like ``ratio``."""
    scale = torch.rsqrt(1 + ratio * ratio)
    return scale, ratio * scale


def add_noise(clean: Tensor, noise: Tensor, ratio: Tensor) -> Tensor:
    """``alpha * clean + sigma * noise`` for clean (..., E), noise (..., E) and ratio (...)."""
    alpha, sigma = alpha_sigma(ratio.to(clean.dtype)[..., None])  # (..., 1)
    return alpha * clean + sigma * noise


def ddim_step(noisy: Tensor, clean: Tensor, ratio_from: Tensor, ratio_to: Tensor) -> Tensor:
    """One deterministic DDIM step (SJD2 eq.; Song et al. 2021) toward a predicted clean embedding.

    ``e_to = (sigma_to / sigma_from) e_from + alpha_from (alpha_to / alpha_from - sigma_to / sigma_from) e_hat``,
    written as ``(sigma_to / sigma_from) e_from + (alpha_to - alpha_from sigma_to / sigma_from) e_hat``.
    With ``ratio_to == 0`` (sigma 0, alpha 1) it returns ``clean`` exactly.

    Args:
        noisy: (..., E) embeddings at ``ratio_from``.
        clean: (..., E) normalised embedding ``e_hat(x)`` of the token sampled for each slot.
        ratio_from: (...) current ratios (> 0).
        ratio_to: (...) ratios after the step (< ratio_from; 0 lands on ``clean``).
    Returns:
        (..., E) embeddings at ``ratio_to``.
    """
    alpha_from, sigma_from = alpha_sigma(ratio_from.to(noisy.dtype)[..., None])  # (..., 1)
    alpha_to, sigma_to = alpha_sigma(ratio_to.to(noisy.dtype)[..., None])
    keep = sigma_to / sigma_from  # (..., 1); exactly 0 at ratio_to == 0
    return keep * noisy + (alpha_to - alpha_from * keep) * clean


class NoisyInputs(Protocol):
    """What the proposer needs of a model fine-tuned for noisy inputs (e.g. :class:`jacobix.images.denoise.NoiseEmbedding`)."""

    @property
    def schedule(self) -> NoiseSchedule: ...

    def normalise(self, embeds: Tensor) -> Tensor:
        """``e_hat``: token embeddings (..., E) normalised, in the dtype of the model's statistics."""
        ...

    def inputs(self, noisy: Tensor, ratio: Tensor) -> Tensor:
        """Model inputs (..., E) of noisy normalised embeddings (..., E) at ratios (...) > 0."""
        ...


@dataclass(frozen=True, kw_only=True)
class SJD2Config:
    """Options of SJD2 decoding.

    Attributes:
        levels: K, noise levels a slot passes through before it is clean (0: plain SJD).
        lossy: LOSSY paper variant: also test drafts whose context is still noisy.
        coupled: redraft each position with the same exponential race every sweep
            (:mod:`jacobix.tokens.proposers.coupled`); still lossless, settles faster.
    """

    levels: int = 5
    lossy: bool = False
    coupled: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 0:
            raise ValueError(f"SJD2Config.levels must be an int >= 0 (0 is plain SJD), got {self.levels!r}")
        for name in ("lossy", "coupled"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SJD2Config.{name} must be True or False, got {getattr(self, name)!r}")


class SJD2Proposer(JacobiProposer):
    """Jacobi-denoising drafts for :func:`~jacobix.tokens.generate.generate` (sampling only).

    Args:
        noise: the fine-tuned model's noisy-input embedding, a :class:`NoisyInputs` such as
            :class:`jacobix.images.denoise.NoiseEmbedding` (None only with ``levels=0``).
        embed: the model's token embedding (``model.embed``), tokens (B, D) -> (B, D, E).
        config: levels, lossy flag, coupling.
        init: draft rule of entering slots (their token is forward-noised; with ``levels=0`` it is SJD's init).
        trace: keep each proposal's slot levels in :attr:`levels_trace` (for pictures).
    """

    def __init__(self, noise: NoisyInputs | None, embed: Callable[[Tensor], Tensor], config: SJD2Config = SJD2Config(), *,
                 init: DraftInit | None = None, trace: bool = False) -> None:
        super().__init__(init)
        self.noise, self.embed, self.config = noise, embed, config
        self.sources = (DraftSource("sjd2-lossy" if config.lossy else "sjd2-lossless", 0.1),)
        # (K + 1,) float64 noise ratios of levels 0 (clean) .. K
        self.ratios = torch.zeros(1, dtype=torch.float64) if noise is None else noise.schedule.level_ratios(config.levels)
        self.race = CoupledProposer() if config.coupled else None
        self.trace = trace
        self.levels_trace: list[Tensor] = []  # (B, D) slot levels fed by each sweep, when traced

    def begin(self, batch_size: int) -> None:
        if self.race is not None:
            self.race.begin(batch_size)
        self.levels_trace = []

    def redraft(self, p_target: Tensor, positions: Tensor, generator: Randomness, previous: Drafts | None = None) -> Tensor:
        if self.race is not None:
            return self.race.redraft(p_target, positions, generator)
        return super().redraft(p_target, positions, generator)

    def propose(self, context: ProposalContext) -> Candidates:
        base = super().propose(context)  # SJD's drafts: carried samples, init tokens at fresh slots
        if self.config.levels == 0:
            return base
        if context.greedy:
            raise ValueError("SJD2 samples: use temperature > 0")
        tokens = base.tokens[:, 0]  # (B, D)
        clean_inputs = self.embed(tokens)  # (B, D, E)
        e, level = self._step(context, clean_inputs)  # (B, D, E), (B, D)
        noisy = level > 0  # (B, D)
        ratio = self.ratios.to(e.device)[level]  # (B, D)
        embeds = torch.where(noisy[..., None], self.noise.inputs(e, ratio).to(clean_inputs.dtype), clean_inputs)
        verifiable = None if self.config.lossy else torch.cumprod((~noisy).long(), 1).bool()  # (B, D) leading clean run
        if self.trace:
            self.levels_trace.append(level.cpu())
        state = torch.cat([e, (level + 1).to(e.dtype)[..., None]], -1)  # (B, D, E + 1); last: level + 1, 0 = unset
        return Candidates(base.tokens, base.p_draft, base.source, embeds[:, None],
                          None if verifiable is None else verifiable[:, None], state)

    def _step(self, context: ProposalContext, clean_inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Slot embeddings (B, D, E) and levels (B, D) for the next sweep from the token embeddings
        (B, D, E) of the drafts: one DDIM step for carried noisy slots, forward noise for entering
        ones (fresh slots, and the bonus slot, which arrives without state)."""
        b, d = clean_inputs.shape[:2]
        target = self.noise.normalise(clean_inputs)  # (B, D, E) e_hat of the sampled tokens, in the statistics' dtype
        dtype = target.dtype
        dim = target.shape[-1]
        carried = context.carried
        state = carried.state if carried is not None and carried.state is not None else target.new_zeros(b, d, dim + 1)
        e, code = state[..., :dim].to(dtype), state[..., dim].round().long()  # code = level + 1, 0 = unset
        entering = context.fresh | (code == 0)  # (B, D)
        level = (code - 1).clamp_min(0)  # (B, D)
        ratios = self.ratios.to(target.device)
        stepping = ~entering & (level > 0)
        stepped = ddim_step(e, target, ratios[level.clamp_min(1)], ratios[(level - 1).clamp_min(0)])  # (B, D, E)
        e = torch.where(stepping[..., None], stepped, e)
        level = torch.where(stepping, level - 1, level)
        k = self.config.levels
        entry = (1 + torch.arange(d, device=target.device) * k // d).clamp(max=k).expand(b, d)  # (B, D) rising to K
        eps = per_row(lambda s, g: torch.randn(s, generator=g, device=target.device, dtype=dtype), (b, d, dim), context.generator)
        e = torch.where(entering[..., None], add_noise(target, eps, ratios[entry]), e)
        level = torch.where(entering, entry, level)
        return e, level


def sjd2_proposer(noise: NoisyInputs | None, embed: Callable[[Tensor], Tensor], config: SJD2Config, *,
                  init: DraftInit | None = None, trace: bool = False) -> SJD2Proposer:
    """An :class:`SJD2Proposer`, refusing a model that was not fine-tuned for SJD2 (``noise`` None)."""
    if noise is None and config.levels > 0:
        raise ValueError("SJD2 with levels > 0 needs a model fine-tuned for it (its noisy-input embedding, e.g. "
                         "load_image_model('fmnist-ar-sjd2').noise); levels=0 is plain SJD")
    return SJD2Proposer(noise, embed, config, init=init, trace=trace)


__all__ = ["NoiseSchedule", "NoisyInputs", "SJD2Config", "SJD2Proposer", "add_noise", "alpha_sigma", "ddim_step",
           "sjd2_proposer"]
