"""SJD2's model side: the noise schedule, the DDIM step, and the noisy-input embedding.

SJD2 (arXiv 2510.08994) fine-tunes an AR token model to predict the next *clean* token when some
of its input embeddings are noisy. Everything here is a pure function or a small module that
turns noisy vectors into input embeddings for ``model.forward(..., embeds=...)``; the model owns
no loop and the decoding lives in :mod:`jacobix.images.sjd2`.

Schedule (ours; the paper's exact one is not published). Noise is measured by the Karras
noise-to-signal ratio ``r`` (EDM's sigma), interpolated in ``r ** (1 / rho)`` from ``ratio_max``
(u = 0) to ``ratio_min`` (u = 1), and mapped to variance-preserving coefficients::

    alpha(r) = 1 / sqrt(1 + r^2),   sigma(r) = r / sqrt(1 + r^2),   e = alpha * e_hat + sigma * eps

``e_hat`` is the token embedding normalised per dimension with fixed statistics of the starting
model's code embeddings (the paper's Fig. 5: without it denoising fails). Decoding with ``K``
levels uses level ``k`` in ``1 .. K`` at ``u = (K - k) / (K - 1)`` (level K is ``ratio_max``,
nearly pure noise) and level 0 is clean (``r = 0``). Training draws ``u`` uniformly, so one
fine-tuned model serves every K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn


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


@dataclass(frozen=True, kw_only=True)
class NoiseEmbeddingConfig:
    """Shape of a :class:`NoiseEmbedding`: the timestep embedding and the schedule it serves.

    Attributes:
        dim: model width (the token embedding size).
        features: sinusoidal features of ``log(ratio)``.
        hidden: width of the timestep MLP.
        ratio_min, ratio_max, rho: the :class:`NoiseSchedule`.
    """

    dim: int
    features: int = 16
    hidden: int = 128
    ratio_min: float = NoiseSchedule.ratio_min
    ratio_max: float = NoiseSchedule.ratio_max
    rho: float = NoiseSchedule.rho

    def __post_init__(self) -> None:
        if min(self.dim, self.features, self.hidden) < 1:
            raise ValueError(f"NoiseEmbeddingConfig needs dim, features, hidden >= 1, got {self}")
        self.schedule  # validates the schedule fields

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(ratio_min=self.ratio_min, ratio_max=self.ratio_max, rho=self.rho)


class NoiseEmbedding(nn.Module):
    """Normalisation statistics of the token embedding and a timestep embedding for noisy inputs.

    ``normalise(embed(x))`` is ``e_hat(x)``; ``inputs(e, ratio)`` is what the model is fed at a
    noisy slot: ``e * std + mean + time(ratio)``. The timestep MLP's last layer starts at zero,
    so a fresh module leaves the starting model's behaviour unchanged.
    """

    def __init__(self, config: NoiseEmbeddingConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(config.dim))
        self.register_buffer("std", torch.ones(config.dim))
        self.time = nn.Sequential(nn.Linear(2 * config.features, config.hidden), nn.SiLU(), nn.Linear(config.hidden, config.dim))
        nn.init.zeros_(self.time[2].weight)
        nn.init.zeros_(self.time[2].bias)
        frequencies = torch.exp(torch.linspace(math.log(0.25), math.log(8.0), config.features))
        self.register_buffer("frequencies", frequencies, persistent=False)

    @torch.no_grad()
    def fit_statistics(self, code_embeddings: Tensor) -> None:
        """Set mean and std (per dimension) from the code embeddings (N, E) of the starting model."""
        self.mean.copy_(code_embeddings.mean(0))
        self.std.copy_(code_embeddings.std(0).clamp_min(1e-6))

    def normalise(self, embeds: Tensor) -> Tensor:
        """``e_hat``: embeddings (..., E) normalised per dimension."""
        return (embeds - self.mean) / self.std

    def inputs(self, noisy: Tensor, ratio: Tensor) -> Tensor:
        """Model inputs (..., E) of noisy normalised embeddings (..., E) at ratios (...) > 0."""
        angles = torch.log(ratio.to(noisy.dtype).clamp_min(1e-8))[..., None] * self.frequencies  # (..., F)
        time = self.time(torch.cat([angles.sin(), angles.cos()], -1))  # (..., E)
        return noisy * self.std + self.mean + time


def save_noise_embedding(module: NoiseEmbedding, directory: str | Path) -> None:
    """Write ``sjd2.safetensors`` (the module's tensors) into a checkpoint folder."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(Path(directory) / "sjd2.safetensors"))


def load_noise_embedding(directory: str | Path, config: dict) -> NoiseEmbedding:
    """The :class:`NoiseEmbedding` of a checkpoint folder (``sjd2.safetensors`` + config.json's ``sjd2.noise``)."""
    from safetensors.torch import load_file

    module = NoiseEmbedding(NoiseEmbeddingConfig(**config))
    module.load_state_dict(load_file(str(Path(directory) / "sjd2.safetensors")))
    return module.eval()


__all__ = ["NoiseEmbedding", "NoiseEmbeddingConfig", "NoiseSchedule", "add_noise", "alpha_sigma", "ddim_step",
           "load_noise_embedding", "save_noise_embedding"]
