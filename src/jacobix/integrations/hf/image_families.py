"""What jacobix needs of each transformers image-token family, read from the classes as transformers ships them.

- **Janus** (``JanusForConditionalGeneration``): image tokens are embedded by
  ``prepare_embeddings_for_image_generation`` and predicted by ``model.generation_head``, not by the
  text embeddings and ``lm_head``; :class:`JanusImageLM` is the adapter that reads them. Guidance runs
  a doubled batch whose unconditional rows are the prompt with every token but BOS and the
  image-start token replaced by padding, as ``JanusForConditionalGeneration.generate`` builds them.
- **Emu3** (``Emu3ForConditionalGeneration``): a plain causal LM over one vocabulary; image rows end
  with an end-of-line token and the image with end-of-frame, end-of-image and EOS tokens.
  :class:`Emu3ImageGrid` is the constraint of the ``prefix_allowed_tokens_fn`` that transformers'
  Emu3 documentation passes to ``generate``, computed for a whole window from each slot's absolute
  position; :func:`emu3_prefix_allowed_tokens_fn` is that function for transformers' own loop.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from jacobix.integrations.hf.adapter import HFCausalLM

EMU3_NAMES = {"eol": "<|extra_200|>", "eof": "<|extra_201|>", "eoi": "<|image end|>", "boi": "<|image start|>",
              "wrapper": "<|image token|>"}


@dataclass(frozen=True)
class _Logits:
    logits: Tensor


class JanusImageLM(HFCausalLM):
    """Janus's image generation as a jacobix :class:`~jacobix.models.protocol.CausalLM`.

    Token ids below a row's prompt length are text (the model's input embeddings); later ones are
    image codes (``prepare_embeddings_for_image_generation``). Logits (B, W, K) come from
    ``generation_head`` over the K image codes. transformers numbers a left-padded row's positions
    from its first padding slot; ``position_offset`` adds those slots so the rotary positions match.

    Args:
        model: a ``JanusForConditionalGeneration``.
        text_length: (B,) unpadded prompt lengths.
        position_offset: (B,) left-padding slots of each row in transformers' batch.
    """

    def __init__(self, model: Any, text_length: Tensor, position_offset: Tensor) -> None:
        super().__init__(model)
        self.vocab_size = int(model.config.vq_config.num_embeddings)
        self.input_vocab_size = max(int(model.config.text_config.vocab_size), self.vocab_size)
        self.text_length, self.position_offset = text_length, position_offset

    def embed(self, tokens: Tensor) -> Tensor:
        """Generation embeddings (B, W, E) of image codes (B, W)."""
        return self.model.prepare_embeddings_for_image_generation(tokens)  # (B, W, E)

    def _run(self, tokens: Tensor | None, embeds: Tensor | None, positions: Tensor, mask: Tensor,
             caching: dict[str, Any], return_hidden: bool) -> Any:
        if return_hidden:
            raise ValueError("JanusImageLM returns image-head logits only (return_hidden is not supported)")
        repeat = positions.shape[0] // len(self.text_length)
        offset = self.position_offset.to(positions.device).repeat(repeat)[:, None]  # (N, 1)
        if embeds is None:
            text = positions < self.text_length.to(positions.device).repeat(repeat)[:, None]  # (N, W)
            embeds = self._embed_mixed(tokens, text)
        out = self.model.model.language_model(inputs_embeds=embeds, position_ids=positions + offset,
                                              attention_mask=mask, **caching)
        return _Logits(self.model.model.generation_head(out.last_hidden_state))  # (N, W, K)

    def _embed_mixed(self, tokens: Tensor, text: Tensor) -> Tensor:
        """Text embeddings where ``text`` (N, W), generation embeddings elsewhere."""
        text_vocab = int(self.model.config.text_config.vocab_size)
        if bool(text.all()):
            return self.model.get_input_embeddings()(tokens)
        image = self.embed(tokens.clamp(max=self.vocab_size - 1))  # (N, W, E)
        if not bool(text.any()):
            return image
        words = self.model.get_input_embeddings()(tokens.clamp(max=text_vocab - 1))  # (N, W, E)
        return torch.where(text[..., None], words, image.to(words.dtype))


def janus_ids(model: Any) -> dict[str, int]:
    """BOS, padding and image-start ids of a Janus model's generation config (ValueError naming a missing one)."""
    config = model.generation_config
    ids = {"bos": config.bos_token_id, "pad": config.pad_token_id,
           "boi": (getattr(config, "generation_kwargs", None) or {}).get("boi_token_id")}
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        names = {"bos": "bos_token_id", "pad": "pad_token_id", "boi": "generation_kwargs['boi_token_id']"}
        raise ValueError(f"model.generation_config lacks {', '.join(names[m] for m in missing)}; Janus image generation "
                         "needs them (the checkpoints' generation_config.json has them)")
    return {name: int(value) for name, value in ids.items()}


def janus_unconditional(prompt: Tensor, ids: dict[str, int]) -> Tensor:
    """The unconditional prompt transformers builds: every token but BOS and image-start set to padding."""
    keep = (prompt == ids["bos"]) | (prompt == ids["boi"])
    return torch.where(keep, prompt, torch.full_like(prompt, ids["pad"]))


def janus_grid(model: Any) -> tuple[int, int]:
    """(rows, columns) of Janus's image: ``vision_config.num_image_tokens`` as a square."""
    count = int(model.config.vision_config.num_image_tokens)
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"vision_config.num_image_tokens={count} is not a square grid")
    return side, side


def emu3_ids(model: Any) -> dict[str, int]:
    """The special ids of Emu3's image layout, from its vocabulary map and generation config."""
    vocab = model.config.vocabulary_map or {}
    ids = {key: vocab.get(name) for key, name in EMU3_NAMES.items()}
    ids["eos"], ids["pad"] = model.generation_config.eos_token_id, model.generation_config.pad_token_id
    if isinstance(ids["eos"], (list, tuple)):
        ids["eos"] = ids["eos"][0]
    missing = [key for key, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"this Emu3 model lacks the ids of {', '.join(missing)} (config.vocabulary_map: "
                         f"{', '.join(EMU3_NAMES[k] for k in missing if k in EMU3_NAMES) or '-'}; "
                         "generation_config: eos_token_id, pad_token_id)")
    return {key: int(value) for key, value in ids.items()}


def emu3_grid_from_prompt(model: Any, prompt: Tensor, ids: dict[str, int]) -> tuple[int, int] | None:
    """(height, width) written in the prompt as ``<|image start|>H*W<|image token|>``, or None."""
    names = {v: k for k, v in (model.config.vocabulary_map or {}).items()}
    row = prompt.tolist()
    if ids["wrapper"] not in row:
        return None
    end = row.index(ids["wrapper"])
    starts = [i for i in range(end) if row[i] == ids["boi"]]
    if not starts:
        return None
    text = "".join(names.get(t, "?") for t in row[starts[-1] + 1 : end])
    found = re.fullmatch(r"\s*(\d+)\s*\*\s*(\d+)\s*", text)
    return (int(found[1]), int(found[2])) if found else None


@dataclass(frozen=True, eq=False)
class Emu3ImageGrid:
    """Emu3's image layout as a jacobix logits processor, one window at a time.

    At generated index ``t`` a row sits ``offset = start_offset + t`` tokens after its image-wrapper
    token; as in transformers' documented ``prefix_allowed_tokens_fn`` (checked in this order):
    ``offset % (width + 1) == 0``: end of line; ``(width + 1) * height + 1, + 2, + 3``: end of
    frame, end of image, EOS; beyond: padding; otherwise any visual token.

    Attributes:
        height, width: the image grid in tokens (a row holds ``width`` visual tokens and an end of line).
        start_offset: (B,) offset of the first generated token (1 when the prompt ends with the wrapper).
        visual: (V,) bool, the visual tokens.
        ids: the special ids (:func:`emu3_ids`).
    """

    height: int
    width: int
    start_offset: Tensor
    visual: Tensor
    ids: dict[str, int]

    def __call__(self, logits: Tensor, new_positions: Tensor) -> Tensor:
        b, device = logits.shape[0], logits.device
        offset = self.start_offset.to(device).repeat(b // len(self.start_offset))[:, None] + new_positions  # (B, W)
        end = (self.width + 1) * self.height
        ids = self.ids
        single = torch.full_like(offset, ids["pad"])
        for shift, name in ((3, "eos"), (2, "eoi"), (1, "eof")):
            single = torch.where(offset == end + shift, ids[name], single)
        eol = offset % (self.width + 1) == 0
        single = torch.where(eol, ids["eol"], single)  # (B, W)
        is_visual = ~eol & (offset <= end)  # (B, W)
        allowed = torch.nn.functional.one_hot(single, logits.shape[-1]).bool()  # (B, W, V)
        allowed = torch.where(is_visual[..., None], self.visual.to(device)[None, None], allowed)
        return logits.masked_fill(~allowed, float("-inf"))


def emu3_prefix_allowed_tokens_fn(model: Any, height: int, width: int) -> Callable[[int, Tensor], list[int]]:
    """transformers' documented Emu3 image constraint, for ``model.generate(prefix_allowed_tokens_fn=...)``."""
    ids, visual = emu3_ids(model), list(model.vocabulary_mapping.image_tokens)

    def allowed(batch_id: int, input_ids: Tensor) -> list[int]:
        position = torch.nonzero(input_ids == ids["wrapper"], as_tuple=True)[0][0]
        offset = input_ids.shape[0] - int(position)
        end = (width + 1) * height
        if offset % (width + 1) == 0:
            return [ids["eol"]]
        for shift, name in ((1, "eof"), (2, "eoi"), (3, "eos")):
            if offset == end + shift:
                return [ids[name]]
        return [ids["pad"]] if offset > end + 3 else visual

    return allowed


__all__ = ["Emu3ImageGrid", "JanusImageLM", "emu3_grid_from_prompt", "emu3_ids", "emu3_prefix_allowed_tokens_fn",
           "janus_grid", "janus_ids", "janus_unconditional"]
