"""The PCCoT model: jacobix's Llama plus the projection that turns a hidden state into a latent.

A :class:`LatentReasoner` reads ``question, <bot>, c latent slots, <eot>, answer prompt`` and
writes the answer. Its checkpoint is the project's one format (``model.safetensors`` +
``config.json``, architecture ``pccot``), holding the layout tokens and the trained number of
Jacobi passes ``T``, which is part of the model (arXiv 2506.18582).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from jacobix.core.cache import slot_mask
from jacobix.core.checkpoints import METADATA, WEIGHTS, build_config, load_weights, read_metadata, save_checkpoint
from jacobix.models.llama import Llama, LlamaConfig

ARCHITECTURE = "pccot"


@dataclass(frozen=True, kw_only=True)
class LatentConfig:
    """Latent thoughts and the special tokens around them.

    Attributes:
        latents: c, the number of latent thought slots.
        passes: T, Jacobi passes over all c slots (T = c is sequential continuous CoT exactly).
        projection: pass hidden states through a learned projection (CODI's ``prj``) before they
            become the next latent input; False feeds the last hidden state as it is.
        bot, eot, placeholder: token ids of ``<bot>``, ``<eot>`` and the placeholder that fills
            the latent slots in the first pass.
        prompt: token ids of the answer prompt ("The answer is:"), read after ``<eot>``.
    """

    latents: int = 6
    passes: int = 3
    projection: bool = True
    bot: int = 1
    eot: int = 2
    placeholder: int = 3
    prompt: tuple[int, ...] = (5, 6)

    def __post_init__(self) -> None:
        if self.latents < 1:
            raise ValueError(f"latents (c) must be >= 1, got {self.latents}")
        if self.passes < 1:
            raise ValueError(f"passes (T) must be >= 1, got {self.passes}")
        if not self.prompt:
            raise ValueError("prompt must hold at least one token (the answer is read at its last position)")
        object.__setattr__(self, "prompt", tuple(int(t) for t in self.prompt))


@dataclass(frozen=True, kw_only=True)
class ReasonerConfig:
    """A :class:`LatentReasoner`'s shape: the language model and its latent layout."""

    llama: LlamaConfig
    latent: LatentConfig = field(default_factory=LatentConfig)

    def __post_init__(self) -> None:
        tokens = (self.latent.bot, self.latent.eot, self.latent.placeholder, *self.latent.prompt)
        if min(tokens) < 0 or max(tokens) >= self.llama.vocab_size:
            raise ValueError(f"latent layout tokens {tokens} must be ids below vocab_size {self.llama.vocab_size}")


class LatentReasoner(nn.Module):
    """Llama with continuous latent thoughts (CODI / PCCoT layout).

    Args:
        config: model shape and latent layout.
    """

    def __init__(self, config: ReasonerConfig) -> None:
        super().__init__()
        self.config = config
        self.lm = Llama(config.llama)
        dim = config.llama.dim
        self.projection = (
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.LayerNorm(dim))
            if config.latent.projection
            else nn.Identity()
        )

    @property
    def latent(self) -> LatentConfig:
        return self.config.latent

    def project(self, hidden: Tensor) -> Tensor:
        """Next latent inputs (B, W, dim) from last-layer hidden states (B, W, dim)."""
        return self.projection(hidden)


class FunctionalCache:
    """A position-indexed cache without in-place writes, so gradients flow through every pass.

    Same semantics as :class:`~jacobix.core.cache.KVCache` (a row writes at its absolute
    positions; a query sees the slots at or before its position), but ``write`` builds new
    tensors instead of writing into preallocated ones. Training uses it; inference uses KVCache.
    """

    def __init__(self, model: Llama, batch_size: int, capacity: int) -> None:
        config = model.config
        if capacity > config.max_seq_len:
            raise ValueError(f"a cache of {capacity} positions exceeds this model's max_seq_len ({config.max_seq_len})")
        weight = model.tok_embeddings.weight
        shape = (batch_size, config.num_kv_heads, capacity, config.head_dim)
        self.keys = [weight.new_zeros(shape) for _ in range(config.num_layers)]
        self.values = [weight.new_zeros(shape) for _ in range(config.num_layers)]
        self.capacity = capacity
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=weight.device)

    def write(self, layer: int, positions: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H_kv, W, hd) at ``positions`` (B, W); returns the layer's (B, H_kv, C, hd) keys and values."""
        b, h, w, d = k.shape
        index = positions[:, None, :, None].expand(b, h, w, d)  # (B, H_kv, W, hd)
        self.keys[layer] = self.keys[layer].scatter(2, index, k)
        self.values[layer] = self.values[layer].scatter(2, index, v)
        return self.keys[layer], self.values[layer]

    def attention_mask(self, positions: Tensor, span: int | None = None) -> Tensor:
        """Boolean mask (B, 1, W, span): a query sees the slots at or before its position (of the first
        ``span``, by default all)."""
        return slot_mask(positions, self.capacity if span is None else span)

    def rollback(self, lengths: Tensor) -> None:
        self.lengths = lengths.clone()


def save_reasoner(model: LatentReasoner, directory: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (architecture ``pccot``) into ``directory``."""
    return save_checkpoint(model, directory, architecture=ARCHITECTURE, extra=extra)


def load_reasoner(directory: str | Path) -> tuple[LatentReasoner, dict]:
    """Load a model written by :func:`save_reasoner`; returns it (eval mode) and its config.json contents."""
    meta = read_metadata(directory, architecture=ARCHITECTURE, hint="train one with `jacobix train pccot`")
    config, source = meta["config"], Path(directory) / METADATA
    model = LatentReasoner(ReasonerConfig(llama=build_config(LlamaConfig, config.get("llama"), source=source, key="config.llama"),
                                          latent=build_config(LatentConfig, config.get("latent"), source=source,
                                                              key="config.latent")))
    load_weights(model, Path(directory) / WEIGHTS)
    return model.eval(), meta


__all__ = ["FunctionalCache", "LatentConfig", "LatentReasoner", "ReasonerConfig", "load_reasoner", "save_reasoner"]
