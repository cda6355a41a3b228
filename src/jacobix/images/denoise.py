"""SJD2's model side: the noisy-input embedding of the fine-tuned image model, saved with its checkpoint.

SJD2 (arXiv 2510.08994) fine-tunes an AR token model to predict the next *clean* token when some
of its input embeddings are noisy. :class:`NoiseEmbedding` is the small module that
turns noisy vectors into input embeddings for ``model.forward(..., embeds=...)``; the model owns
no loop and the decoding lives in :mod:`jacobix.tokens.proposers.denoising`.

The schedule and the DDIM step are the proposer's, in :mod:`jacobix.tokens.proposers.denoising`
(re-exported here): they hold for any token embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from jacobix.tokens.proposers.denoising import NoiseSchedule, add_noise, alpha_sigma, ddim_step


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

    @property
    def schedule(self) -> NoiseSchedule:
        """The noise schedule this module was trained on."""
        return self.config.schedule

    def normalise(self, embeds: Tensor) -> Tensor:
        """``e_hat``: embeddings (..., E) normalised per dimension, in the statistics' dtype."""
        return (embeds.to(self.std.dtype) - self.mean) / self.std

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
    from jacobix.core.checkpoints import METADATA, build_config, load_weights

    module = NoiseEmbedding(build_config(NoiseEmbeddingConfig, config, source=Path(directory) / METADATA,
                                         key="sjd2.noise"))
    load_weights(module, Path(directory) / "sjd2.safetensors")
    return module.eval()


__all__ = ["NoiseEmbedding", "NoiseEmbeddingConfig", "NoiseSchedule", "add_noise", "alpha_sigma", "ddim_step",
           "load_noise_embedding", "save_noise_embedding"]
