"""TarFlow (Zhai et al. 2024, apple/ml-tarflow): a normalizing flow of causal transformer blocks.

An image (B, C, H, W) is cut into T patches of F = C*p*p values. Each of ``num_blocks``
meta-blocks sees the patches in its own order (odd blocks flip it), embeds them (linear in,
learned positions, class embedding), runs pre-LN causal transformer layers and a zero-initialised
linear out. The output at position t is (a, b) for position t+1 (shift by one: position 0 gets
zeros), and the block maps ``z_t = (x_t - b_{t-1}) * exp(-a_{t-1})``.

The model owns no sampling loop (see :mod:`jacobix.flows.sampling`): :meth:`MetaBlock.affine`
maps a window of patches at given positions to (a, b) through an explicit KV cache.

Parameter names and shapes equal ml-tarflow's ``transformer_flow.Model`` (nvp mode), so its
checkpoints load with :func:`jacobix.flows.checkpoint.load_apple_checkpoint`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jacobix.core.cache import KVCache


@dataclass(frozen=True, kw_only=True)
class TarFlowConfig:
    """Shape of a :class:`TarFlow` model (ml-tarflow's ``Model`` arguments, nvp mode).

    Attributes:
        in_channels: image channels C.
        img_size: image height = width.
        patch_size: patch side p; ``img_size`` must be a multiple.
        channels: transformer width.
        num_blocks: meta-blocks (flow steps).
        layers_per_block: transformer layers per meta-block.
        head_dim: size of one attention head (ml-tarflow uses 64).
        expansion: MLP hidden size / width.
        num_classes: 0 for an unconditional model.
        noise_std: sigma of the training noise; also the denoising step's scale.
    """

    in_channels: int = 1
    img_size: int = 28
    patch_size: int = 4
    channels: int = 128
    num_blocks: int = 4
    layers_per_block: int = 2
    head_dim: int = 64
    expansion: int = 4
    num_classes: int = 0
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        for name in ("in_channels", "img_size", "patch_size", "channels", "num_blocks", "layers_per_block", "head_dim", "expansion"):
            if getattr(self, name) < 1:
                raise ValueError(f"TarFlowConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"TarFlowConfig.num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if self.img_size % self.patch_size:
            raise ValueError(f"TarFlowConfig.img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.channels % self.head_dim:
            raise ValueError(f"TarFlowConfig.channels ({self.channels}) must be a multiple of head_dim ({self.head_dim})")
        if self.num_patches < 2:
            raise ValueError("TarFlowConfig: an image must give at least 2 patches; use a smaller patch_size")
        if self.noise_std < 0:
            raise ValueError(f"TarFlowConfig.noise_std must be >= 0, got {self.noise_std}")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size**2

    @property
    def num_heads(self) -> int:
        return self.channels // self.head_dim


class Attention(nn.Module):
    """Pre-LN multi-head causal self-attention; ``qkv`` packs [q | k | v], heads contiguous."""

    def __init__(self, channels: int, head_dim: int, layer: int) -> None:
        super().__init__()
        self.layer, self.head_dim, self.num_heads = layer, head_dim, channels // head_dim
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, channels * 3)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor, positions: Tensor | None, cache: KVCache | None, span: int, temperature: Tensor | None = None) -> Tensor:
        b, w, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, w, 3 * self.num_heads, self.head_dim).transpose(1, 2)  # (B, 3H, W, hd)
        q, k, v = qkv.chunk(3, dim=1)  # (B, H, W, hd) each
        if temperature is not None:  # logits / temperature; keys and values stay as they are
            q = q / temperature.to(q.dtype)[:, None, None, None]
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            keys, values = cache.write(self.layer, positions, k, v)  # (B, H, cap, hd)
            mask = cache.attention_mask(positions)[..., :span]  # (B, 1, W, span)
            out = F.scaled_dot_product_attention(q, keys[:, :, :span], values[:, :, :span], attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, w, c))  # (B, W, C)


class MLP(nn.Module):
    def __init__(self, channels: int, expansion: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.main = nn.Sequential(nn.Linear(channels, channels * expansion), nn.GELU(), nn.Linear(channels * expansion, channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.main(self.norm(x))


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, expansion: int, layer: int) -> None:
        super().__init__()
        self.attention = Attention(channels, head_dim, layer)
        self.mlp = MLP(channels, expansion)

    def forward(self, x: Tensor, positions: Tensor | None, cache: KVCache | None, span: int, temperature: Tensor | None = None) -> Tensor:
        x = x + self.attention(x, positions, cache, span, temperature)
        return x + self.mlp(x)


class MetaBlock(nn.Module):
    """One flow step: an affine autoregressive transform in its own token order.

    Args:
        config: the model's config.
        flip: True for odd blocks, which see the patches in reverse order.
    """

    def __init__(self, config: TarFlowConfig, flip: bool) -> None:
        super().__init__()
        self.flip, self.num_patches, self.patch_dim = flip, config.num_patches, config.patch_dim
        self.proj_in = nn.Linear(config.patch_dim, config.channels)
        self.pos_embed = nn.Parameter(torch.randn(config.num_patches, config.channels) * 1e-2)
        self.class_embed = nn.Parameter(torch.randn(config.num_classes, 1, config.channels) * 1e-2) if config.num_classes else None
        self.attn_blocks = nn.ModuleList(
            AttentionBlock(config.channels, config.head_dim, config.expansion, layer) for layer in range(config.layers_per_block)
        )
        self.proj_out = nn.Linear(config.channels, 2 * config.patch_dim)
        nn.init.zeros_(self.proj_out.weight)

    def permute(self, x: Tensor) -> Tensor:
        """Image patch order (B, T, *) <-> this block's order (the flip is its own inverse)."""
        return x.flip(1) if self.flip else x

    def embed_labels(self, labels: Tensor | None, batch: int) -> Tensor | int:
        """Class embedding (B, 1, C): label -1 (dropped) or ``labels=None`` give the mean embedding."""
        if self.class_embed is None:
            return 0
        mean = self.class_embed.mean(dim=0)  # (1, C)
        if labels is None:
            return mean.expand(batch, 1, -1)
        picked = self.class_embed[labels.clamp_min(0)]  # (B, 1, C)
        return torch.where((labels < 0)[:, None, None], mean, picked)

    def affine(
        self, x: Tensor, labels: Tensor | None, positions: Tensor | None = None, cache: KVCache | None = None,
        *, temperature: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Raw (a, b) at each input position: they parametrise the *next* position.

        Args:
            x: (B, W, F) patches in this block's order.
            labels: (B,) class ids, -1 for the mean embedding; None for an unconditional pass.
            positions: (B, W) positions in this block's order; 0..W-1 when None. Positions past
                the last patch (garbage slots of a window) reuse the last position embedding.
            cache: KV cache written at ``positions``; None for a causal pass over ``x`` alone.
            temperature: (B,) attention temperature per row: every layer's attention logits are
                divided by it (ml-tarflow's ``attn_temp``); None is the model itself.
        Returns:
            a, b: (B, W, F) each; ``x_{t+1} = z_{t+1} * exp(a_t) + b_t``.
        """
        b, w, _ = x.shape
        pos_table = self.permute(self.pos_embed[None])[0]  # (T, C) in this block's order
        if positions is None:
            pos, span = pos_table[:w][None], w
        else:
            pos, span = pos_table[positions.clamp(max=self.num_patches - 1)], int(positions.max()) + 1
        h = self.proj_in(x) + pos + self.embed_labels(labels, b)  # (B, W, C)
        for layer in self.attn_blocks:
            h = layer(h, positions, cache, span, temperature)
        a, shift = self.proj_out(h).chunk(2, dim=-1)  # (B, W, F) each
        return a, shift

    def forward(self, x: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Data direction: x (B, T, F) in image order -> z (B, T, F) in image order, logdet (B,)."""
        x = self.permute(x)
        a, shift = self.affine(x, labels)  # (B, T, F) each
        a = F.pad(a[:, :-1], (0, 0, 1, 0))  # shift by one: token 0 gets zeros
        shift = F.pad(shift[:, :-1], (0, 0, 1, 0))
        z = (x - shift) * torch.exp(-a)  # (B, T, F)
        return self.permute(z), -a.mean(dim=(1, 2))

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        """An empty KV cache for this block's layers."""
        weight = self.proj_in.weight
        first = self.attn_blocks[0].attention
        return KVCache(
            num_layers=len(self.attn_blocks), batch_size=batch_size, num_kv_heads=first.num_heads,
            capacity=capacity, head_dim=first.head_dim, dtype=weight.dtype, device=weight.device,
        )


class TarFlow(nn.Module):
    """TarFlow: ``forward`` maps images to latents; samplers invert it block by block.

    The buffer ``var`` (T, F) is the prior variance (all ones in nvp mode), kept for checkpoint
    compatibility with ml-tarflow.
    """

    def __init__(self, config: TarFlowConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(MetaBlock(config, flip=bool(i % 2)) for i in range(config.num_blocks))
        self.register_buffer("var", torch.ones(config.num_patches, config.patch_dim))

    def patchify(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, T, C*p*p), channel-major inside a patch (as ``F.unfold``)."""
        return F.unfold(images, self.config.patch_size, stride=self.config.patch_size).transpose(1, 2)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, T, C*p*p) -> (B, C, H, W)."""
        size, p = self.config.img_size, self.config.patch_size
        return F.fold(patches.transpose(1, 2), (size, size), p, stride=p)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, list[Tensor], Tensor]:
        """Data -> latent.

        Args:
            images: (B, C, H, W) in [-1, 1] (plus noise during training).
            labels: (B,) class ids (-1 = dropped), or None.
        Returns:
            z (B, T, F); the output of every block (list of (B, T, F)); total logdet (B,).
        """
        self._check_labels(labels)
        x = self.patchify(images)  # (B, T, F)
        outputs, logdet = [], images.new_zeros(images.shape[0])
        for block in self.blocks:
            x, block_logdet = block(x, labels)
            logdet = logdet + block_logdet
            outputs.append(x)
        return x, outputs, logdet

    def loss(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood per dimension, up to a constant: ``0.5*mean(z^2) - mean(logdet)``."""
        z, _, logdet = self(images, labels)
        return 0.5 * z.pow(2).mean() - logdet.mean()

    def _check_labels(self, labels: Tensor | None) -> None:
        if labels is not None and not self.config.num_classes:
            raise ValueError("this TarFlow is unconditional (num_classes=0): pass labels=None")
        if labels is not None and int(labels.max()) >= self.config.num_classes:
            raise ValueError(f"labels must be < num_classes ({self.config.num_classes}) or -1 (dropped)")


def denoise(model: TarFlow, images: Tensor, labels: Tensor | None, *, step_scale: float = 1.0) -> Tensor:
    """TarFlow's final score-based denoising step (Tweedie): ``x - step_scale * sigma^2 * grad_x NLL(x)``.

    NLL is summed over dimensions for each sample, which equals ml-tarflow's step size
    ``B*H*W*C*sigma^2`` applied to the mean-reduced loss; ``step_scale`` is its
    ``self_denoising_lr`` multiplier (1 is the Tweedie step, 0 leaves the images as they are).

    Args:
        model: the flow (its ``config.noise_std`` is sigma).
        images: (B, C, H, W) noisy samples.
        labels: (B,) classes used for sampling, or None.
        step_scale: multiplier of the step size, >= 0.
    Returns:
        (B, C, H, W) denoised samples (detached).
    """
    check_step_scale(step_scale)
    sigma = model.config.noise_std
    with torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        nll = model.loss(x, labels) * x.numel()
        (grad,) = torch.autograd.grad(nll, [x])
    return (x - step_scale * sigma**2 * grad).detach()


def check_step_scale(step_scale: float) -> None:
    """Refuse a denoising step multiplier that is negative or not finite."""
    if not (math.isfinite(step_scale) and step_scale >= 0):
        raise ValueError(f"the denoising step_scale must be finite and >= 0 (1 = the Tweedie step, 0 = none), got {step_scale}")


__all__ = ["MetaBlock", "TarFlow", "TarFlowConfig", "denoise"]
