"""Tiny random Janus and Emu3 models, built in code from a seed (tests and ``jacobix bench images --hf``).

They are the transformers classes with a few layers, a hidden size of 32, a small image-code
vocabulary and grid, and weights drawn with a large ``initializer_range`` so that their
distributions are far from uniform. :func:`tiny_janus_prompts` and :func:`tiny_emu3_prompts` build
prompts the way the families' processors do (left padding, image-start markers).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from jacobix.integrations.hf._deps import require_transformers

JANUS_IDS = {"pad": 0, "bos": 1, "eos": 2, "image": 3, "boi": 5}
EMU3_SPECIALS = ["<|endoftext|>", "<|extra_203|>", "<|extra_204|>", "<image>", "<|image start|>", "<|image token|>",
                 "<|image end|>", "<|extra_200|>", "<|extra_201|>"]
EMU3_WORDS = 8


def _text(vocab_size: int, init: float, context: int) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=context, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                initializer_range=init)


def tiny_janus(*, codes: int = 8, side: int = 4, seed: int = 0, init: float = 0.3, context: int = 256) -> Any:
    """A ``JanusForConditionalGeneration`` with ``codes`` image codes on a ``side`` x ``side`` grid."""
    tf = require_transformers()
    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=8 * side,
                  patch_size=8, num_image_tokens=side * side, projection_dim=32)
    vq = dict(embed_dim=8, num_embeddings=codes, base_channels=32, channel_multiplier=[1, 1], num_res_blocks=1,
              latent_channels=32, projection_dim=32, image_token_embed_dim=32, num_hidden_layers=1, initializer_range=init)
    config = tf.JanusConfig(text_config=dict(_text(40, init, context), model_type="llama"), vision_config=vision,
                            vq_config=vq, image_token_id=JANUS_IDS["image"])
    model = tf.JanusForConditionalGeneration(config).eval()
    _spread(model.model.generation_head, init)
    model.generation_config = tf.GenerationConfig(bos_token_id=1, pad_token_id=0, eos_token_id=2, guidance_scale=3.0,
                                                  generation_kwargs={"boi_token_id": JANUS_IDS["boi"]})
    return model


def _spread(module: torch.nn.Module, std: float) -> None:
    """Redraw the linear layers of an image head at ``std`` (transformers draws some heads at its own scale)."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0.0, std)


def tiny_janus_prompts(words: list[list[int]]) -> dict[str, Tensor]:
    """Janus image prompts ``BOS words... <begin_of_image>``, left-padded: input_ids and attention_mask."""
    rows = [[JANUS_IDS["bos"], *[10 + w for w in ws], JANUS_IDS["boi"]] for ws in words]
    return _left_pad(rows, JANUS_IDS["pad"])


def emu3_vocabulary(codes: int) -> dict[str, int]:
    """A small Emu3 vocabulary map: special tokens, digits, '*', a few words, then ``codes`` visual tokens."""
    names = EMU3_SPECIALS + list("0123456789*") + [f"w{i}" for i in range(EMU3_WORDS)]
    names += [f"<|visual token {k:06d}|>" for k in range(codes)]
    return {name: i for i, name in enumerate(names)}


def tiny_emu3(*, codes: int = 8, seed: int = 0, init: float = 0.3, context: int = 256) -> Any:
    """An ``Emu3ForConditionalGeneration`` with ``codes`` visual tokens (grids are set by the prompt)."""
    tf = require_transformers()
    torch.manual_seed(seed)
    vocab = emu3_vocabulary(codes)
    vq = dict(codebook_size=codes, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 1],
              num_res_blocks=1, attn_resolutions=[], hidden_size=32, num_attention_heads=1, temporal_downsample_factor=1)
    config = tf.Emu3Config(text_config=_text(len(vocab), init, context), vq_config=vq, vocabulary_map=vocab)
    model = tf.Emu3ForConditionalGeneration(config).eval()
    model.generation_config = tf.GenerationConfig(bos_token_id=1, pad_token_id=0, eos_token_id=2)
    return model


def tiny_emu3_prompts(words: list[list[int]], height: int, width: int, codes: int = 8) -> dict[str, Any]:
    """Emu3 image prompts ``BOS words... <|image start|>H*W<|image token|>``, left-padded, with image_sizes."""
    vocab = emu3_vocabulary(codes)
    size = [vocab[c] for c in f"{height}*{width}"]
    rows = [[vocab["<|extra_203|>"], *[vocab[f"w{w}"] for w in ws], vocab["<|image start|>"], *size,
             vocab["<|image token|>"]] for ws in words]
    return {**_left_pad(rows, 0), "image_sizes": [[height, width]] * len(rows)}


def _left_pad(rows: list[list[int]], pad: int) -> dict[str, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])  # (B, L)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])  # (B, L)
    return {"input_ids": ids, "attention_mask": mask}


__all__ = ["emu3_vocabulary", "tiny_emu3", "tiny_emu3_prompts", "tiny_janus", "tiny_janus_prompts"]
