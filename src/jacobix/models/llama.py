"""A small pure-torch Llama-style causal language model with an explicit position-indexed cache.

RMSNorm, rotary position embeddings, SwiGLU and grouped-query attention, as in Llama. The model
owns no decoding loop: ``forward`` maps a window of tokens at given absolute positions to logits,
writing keys and values into the cache it is handed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jacobix.core.cache import KVCache, tree_slots
from jacobix.models.protocol import LMOutput
from jacobix.core.checkpoints import METADATA, WEIGHTS, build_config, load_weights, read_metadata, save_checkpoint


@dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """Shape of a :class:`Llama` model."""

    vocab_size: int
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    hidden_dim: int = 384
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads", "hidden_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"LlamaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"LlamaConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if (self.dim // self.num_heads) % 2:
            raise ValueError("LlamaConfig: the head size dim // num_heads must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_tables(head_dim: int, max_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables, each (max_len, head_dim // 2)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, hd/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., :h], x[..., h:]) of x (B, H, W, hd) by per-position angles (B, 1, W, hd/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.wq = nn.Linear(config.dim, config.num_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.num_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.num_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.num_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, slots: Tensor, cache: KVCache | None,
                mask: Tensor | None = None) -> Tensor:
        """Attention of a window written at ``slots`` (B, W) of ``cache``, seeing what ``mask``
        (B, 1, W, S) allows among the first S slots; without a cache, causal (or ``mask`` (W, W))."""
        b, w, _ = x.shape
        q = self.wq(x).view(b, w, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, W, hd)
        k = self.wk(x).view(b, w, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, W, hd)
        v = self.wv(x).view(b, w, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, W, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        else:
            keys, values = cache.write(self.layer, slots, k, v)  # (B, Hkv, C, hd)
            span = mask.shape[-1]  # slots in use: attention never pays for the cache's unused room
            out = F.scaled_dot_product_attention(q, keys[:, :, :span], values[:, :, :span], attn_mask=mask, enable_gqa=True)
        return self.wo(out.transpose(1, 2).reshape(b, w, -1))  # (B, W, dim)


class FeedForward(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.w2 = nn.Linear(config.hidden_dim, config.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, slots: Tensor, cache: KVCache | None,
                mask: Tensor | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, slots, cache, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    """Llama-style decoder. ``forward(tokens, positions, cache)`` returns logits (B, W, V)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.max_positions = config.max_seq_len
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        cos, sin = rotary_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos.float(), persistent=False)
        self.register_buffer("rope_sin", sin.float(), persistent=False)

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        """An empty cache for ``batch_size`` rows of up to ``capacity`` positions."""
        if capacity > self.config.max_seq_len:
            raise ValueError(
                f"a cache of {capacity} positions exceeds this model's max_seq_len ({self.config.max_seq_len}); "
                "ask for fewer new tokens or a shorter prompt"
            )
        weight = self.tok_embeddings.weight
        return KVCache(
            num_layers=self.config.num_layers,
            batch_size=batch_size,
            num_kv_heads=self.config.num_kv_heads,
            capacity=capacity,
            head_dim=self.config.head_dim,
            dtype=weight.dtype,
            device=weight.device,
        )

    def embed(self, tokens: Tensor) -> Tensor:
        """Input embeddings (B, W, dim) of tokens (B, W), as :meth:`forward` computes them."""
        return self.tok_embeddings(tokens)

    def forward(
        self,
        tokens: Tensor | None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        *,
        embeds: Tensor | None = None,
        return_hidden: bool = False,
        tree: Tensor | None = None,
    ) -> Tensor | LMOutput:
        """Logits for a window of tokens (or of input embeddings).

        Args:
            tokens: (B, W) token ids; may be None when ``embeds`` is given.
            positions: (B, W) absolute positions; defaults to 0..W-1. Required with a cache.
            cache: written at ``positions``; without it attention is causal within the window.
            embeds: (B, W, dim) input embeddings used instead of ``embed(tokens)``.
            return_hidden: return an :class:`~jacobix.models.protocol.LMOutput` with the input
                embeddings, every layer's output, and the final-norm output as hidden states.
            tree: (W, W) bool, the window is a draft tree (:mod:`jacobix.core.tree`): token i sees
                token j when j is i or its ancestor; with a cache, token i is written at slot
                ``positions[:, 0] + i`` and sees the slots before that root slot. Without a cache it may
                also be (B, 1, W, W), one per row: any visibility mask, such as the packed sequences of
                :mod:`jacobix.train.jacobi_forcing`.
        Returns:
            logits (B, W, V), or an LMOutput when ``return_hidden``.
        """
        x = self.embed(tokens) if embeds is None else embeds.to(self.tok_embeddings.weight.dtype)  # (B, W, dim)
        b, w = x.shape[:2]
        if positions is None:
            if cache is not None:
                raise ValueError("forward with a cache needs explicit positions")
            positions = torch.arange(w, device=x.device).expand(b, w)
        cos = self.rope_cos[positions][:, None].to(x.dtype)  # (B, 1, W, hd/2)
        sin = self.rope_sin[positions][:, None].to(x.dtype)
        slots, mask = self._slots_and_mask(positions, cache, tree)
        hidden = [x]
        for layer in self.layers:
            x = layer(x, cos, sin, slots, cache, mask)
            hidden.append(x)
        x = self.norm(x)
        logits = self.output(x)  # (B, W, V)
        if not return_hidden:
            return logits
        return LMOutput(logits=logits, hidden_states=(*hidden[:-1], x))

    @staticmethod
    def _slots_and_mask(positions: Tensor, cache: KVCache | None, tree: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Where the window is written and what it sees, made once for every layer: a chain is written at
        its positions, a tree at consecutive slots from its root's; the mask covers the slots in use."""
        if cache is None:
            return positions, tree
        if tree is None:
            return positions, cache.attention_mask(positions, _attention_span(positions))  # (B, 1, W, S)
        slots = tree_slots(positions)  # (B, N)
        return slots, cache.tree_mask(positions[:, 0], tree, _attention_span(slots))


def _attention_span(slots: Tensor) -> int:
    """Cache slots a window's attention reads: up to its last slot (the one host sync of a forward)."""
    return int(slots.max()) + 1


def save_llama(model: Llama, directory: str | Path, *, extra: dict | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` (plus ``extra`` keys) into ``directory``."""
    save_checkpoint(model, directory, architecture="llama", extra=extra)


def load_llama(directory: str | Path) -> tuple[Llama, dict]:
    """Load a model written by :func:`save_llama`; returns the model and its config.json contents."""
    meta = read_metadata(directory, architecture="llama", hint="write one with jacobix.models.save_llama")
    model = Llama(build_config(LlamaConfig, meta["config"], source=Path(directory) / METADATA))
    load_weights(model, Path(directory) / WEIGHTS)
    return model.eval(), meta
