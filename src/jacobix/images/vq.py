"""A small VQ image tokenizer for 28x28 grayscale images (LlamaGen-style, l2-normalised codes).

A conv encoder halves the resolution to a 14x14 grid of ``code_dim`` vectors; each vector is
replaced by its nearest codebook entry by cosine similarity (both sides l2-normalised, as in
LlamaGen's tokenizer, which keeps low-dimensional codebooks well used); a conv decoder maps the
codes back to pixels. Training uses the codebook and commitment losses of VQ-VAE with the
straight-through estimator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jacobix import assets
from jacobix.core.checkpoints import METADATA, WEIGHTS, build_config, load_weights, read_metadata, save_checkpoint
from jacobix.eval.quality import ImageBatch, to_unit_images



@dataclass(frozen=True, kw_only=True)
class VQConfig:
    """Shape of :class:`VQTokenizer` and its commitment weight."""

    codebook_size: int = 256
    code_dim: int = 8
    channels: int = 16
    hidden: int = 32
    commitment: float = 0.25

    def __post_init__(self) -> None:
        for name in ("codebook_size", "code_dim", "channels", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"VQConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.commitment < 0:
            raise ValueError(f"VQConfig.commitment must be >= 0, got {self.commitment}")

    @property
    def grid(self) -> int:
        """Tokens per side of the grid (28 / 2)."""
        return 14


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


@dataclass(frozen=True)
class Quantized:
    """Output of :meth:`VQTokenizer.quantize`: straight-through codes, indices and the VQ loss."""

    codes: Tensor  # (N, code_dim, 14, 14) with straight-through gradient
    indices: Tensor  # (N, 14, 14) long
    loss: Tensor  # () codebook + commitment loss


class VQTokenizer(nn.Module):
    """Image (N, 28, 28) <-> token grid (N, 14, 14) with ``codebook_size`` codes."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        c, h = config.channels, config.hidden
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, h, 4, stride=2, padding=1),  # 28 -> 14
            ResBlock(h), nn.SiLU(), nn.Conv2d(h, config.code_dim, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(config.code_dim, h, 3, padding=1), ResBlock(h), nn.SiLU(),
            nn.ConvTranspose2d(h, c, 4, stride=2, padding=1), nn.SiLU(),  # 14 -> 28
            nn.Conv2d(c, 1, 3, padding=1),
        )
        self.codebook = nn.Parameter(torch.randn(config.codebook_size, config.code_dim))

    def normalized_codebook(self) -> Tensor:
        return F.normalize(self.codebook, dim=-1)  # (K, code_dim)

    def quantize(self, z: Tensor) -> Quantized:
        """Nearest l2-normalised code of each vector of ``z`` (N, code_dim, 14, 14)."""
        z = F.normalize(z, dim=1)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N*14*14, code_dim)
        codebook = self.normalized_codebook()
        indices = (flat @ codebook.T).argmax(-1)  # (N*14*14,)
        chosen = codebook[indices].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        loss = F.mse_loss(chosen, z.detach()) + self.config.commitment * F.mse_loss(z, chosen.detach())
        codes = z + (chosen - z).detach()  # straight-through
        return Quantized(codes, indices.view(z.shape[0], z.shape[2], z.shape[3]), loss)

    def forward(self, images: Tensor) -> tuple[Tensor, Quantized]:
        """Training pass: images (N, 1, 28, 28) in [0, 1] to reconstruction logits and the quantization."""
        quantized = self.quantize(self.encoder(images * 2 - 1))
        return self.decoder(quantized.codes), quantized

    @torch.no_grad()
    def encode(self, images: ImageBatch, batch_size: int = 1000) -> Tensor:
        """Images (N, 28, 28) or (N, 1, 28, 28), uint8 or floats in [0, 1], to tokens (N, 14, 14) long."""
        x = to_unit_images(images).to(self.codebook.device)
        return torch.cat([self.quantize(self.encoder(chunk * 2 - 1)).indices for chunk in x.split(batch_size)])

    @torch.no_grad()
    def decode(self, tokens: Tensor, batch_size: int = 1000) -> Tensor:
        """Tokens (N, 14, 14) or (N, 196) in [0, codebook_size) to images (N, 28, 28) float in [0, 1]."""
        grid = self.config.grid
        if tokens.dim() == 2 and tokens.shape[1] == grid * grid:
            tokens = tokens.view(-1, grid, grid)
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != (grid, grid):
            raise ValueError(f"tokens must be (N, {grid}, {grid}) or (N, {grid * grid}), got {tuple(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.config.codebook_size:
            raise ValueError(f"tokens must be image codes in [0, {self.config.codebook_size}); strip class tokens first")
        codebook = self.normalized_codebook()
        out = []
        for chunk in tokens.to(self.codebook.device).long().split(batch_size):
            codes = codebook[chunk].permute(0, 3, 1, 2)  # (n, code_dim, 14, 14)
            out.append(torch.sigmoid(self.decoder(codes))[:, 0])  # (n, 28, 28)
        return torch.cat(out).cpu()


def save_vq(model: VQTokenizer, directory: str | Path, *, extra: dict | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
    save_checkpoint(model, directory, architecture="vq", extra=extra)


def load_vq(directory: str | Path | None = None) -> VQTokenizer:
    """Load a tokenizer written by :func:`save_vq` (default: the bundled ``assets/fmnist-vq``)."""
    directory = Path(directory) if directory is not None else assets.get("fmnist-vq", kind="vq").path
    meta = read_metadata(directory, architecture="vq", hint=f"train one with: jacobix train vq --out {directory}")
    model = VQTokenizer(build_config(VQConfig, meta["config"], source=directory / METADATA))
    load_weights(model, directory / WEIGHTS)
    return model.eval()
