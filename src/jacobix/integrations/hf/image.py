"""Image-token models from transformers on jacobix's engine: :func:`generate_image`.

One call decodes the image grid of a Janus or Emu3 model with sequential decoding, greedy Jacobi,
SJD or coupled SJD, with the model's own classifier-free guidance and token constraints, and
returns the image tokens (and pixels, through the model's own VQ decoder). The models are used as
transformers ships them; what each family needs is read in :mod:`.image_families`. The decoding
itself is :func:`jacobix.tokens.generate.generate`: the same engine, verifier and proposers as text.

Example::

    from jacobix import Decoding, SamplingConfig
    from jacobix.integrations.hf import generate_image
    out = generate_image(model, inputs, decoding=Decoding(method="sjd-coupled", init="row-above"),
                         sampling=SamplingConfig(temperature=1.0), guidance_scale=5.0)
    out.image_tokens, out.pixels, out.stats.forward_passes
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from jacobix.core.sampling import LogitsProcessor, Randomness, SamplingConfig
from jacobix.integrations.hf.adapter import HFCausalLM
from jacobix.integrations.hf.image_families import (Emu3ImageGrid, JanusImageLM, emu3_grid_from_prompt, emu3_ids,
                                                    janus_grid, janus_ids, janus_unconditional)
from jacobix.tokens.decoding import Decoding, Guidance
from jacobix.tokens.generate import generate
from jacobix.tokens.result import DecodeStats

SUPPORTED = {"JanusForConditionalGeneration": "janus", "Emu3ForConditionalGeneration": "emu3"}
GRID_INITS = ("random", "repeat", "row-above")


@dataclass(frozen=True)
class ImageResult:
    """Generated images and how they were made.

    Attributes:
        sequences: (B, N) the tokens after the prompt, as the model's own image generation returns
            them (Janus: image codes; Emu3: its ids, end-of-line and closing tokens included).
        image_tokens: (B, H, W) VQ codebook indices.
        pixels: what the model's ``decode_image_tokens`` returns, or None (``decode_pixels=False``).
        stats: the decoding's :class:`~jacobix.tokens.result.DecodeStats` (``forward_passes``, ...).
    """

    sequences: Tensor
    image_tokens: Tensor
    pixels: Tensor | None
    stats: DecodeStats = field(repr=False)

    @property
    def forward_passes(self) -> int:
        """Model passes of the whole batch, prefill included."""
        return self.stats.forward_passes + self.stats.prefill_passes


@dataclass(frozen=True)
class _Plan:
    """One family's request, in jacobix's terms."""

    lm: Any
    prompts: list[Tensor]
    guidance: Guidance | None
    processors: tuple[LogitsProcessor, ...]
    max_new_tokens: int
    row_length: int
    eos: int | None
    finish: Callable[[Tensor, bool], tuple[Tensor, Tensor | None]]


def generate_image(model: Any, inputs: Any, *, decoding: Decoding | None = None, sampling: SamplingConfig | None = None,
                   guidance_scale: float | None = None, negative_input_ids: Any = None, generator: Randomness = None,
                   decode_pixels: bool = True, progress: bool = False) -> ImageResult:
    """Generate one image per prompt with a transformers Janus or Emu3 model.

    Args:
        model: ``JanusForConditionalGeneration`` or ``Emu3ForConditionalGeneration`` (in eval mode).
        inputs: the processor's output for image generation (``input_ids``, ``attention_mask``; Emu3 also
            ``image_sizes``), or a (B, L) tensor of prompt ids. Padding must be on the left.
        decoding: method "ar", "jacobi" (greedy), "sjd" or "sjd-coupled", window, and draft rule
            ("random", "repeat" or "row-above": the token one image row above). Default greedy Jacobi.
        sampling: the target distribution (default greedy; the sampling methods need temperature > 0).
        guidance_scale: classifier-free guidance scale >= 0 (default: the model's generation config;
            Janus falls back to 5 as transformers does, Emu3 to 1, no guidance).
        negative_input_ids: Emu3's unconditional prompts, one per row (default: each prompt's last
            token, as transformers); Janus builds its own.
        generator: a ``torch.Generator`` (or one per row) for the sampling methods.
        decode_pixels: also decode pixels with the model's VQ decoder.
        progress: show a progress bar of passes.
    Returns:
        :class:`ImageResult`.
    Raises:
        ValueError: an unsupported model, a bad argument or prompt, before any model pass.
    """
    family = _family(model)
    decoding, sampling = decoding or Decoding(), sampling or SamplingConfig()
    scale = _check_scale(guidance_scale)
    _check_decoding(decoding)
    input_ids, mask, sizes = _unpack(inputs)
    if family == "janus":
        if negative_input_ids is not None:
            raise ValueError("negative_input_ids: Janus builds its unconditional prompt itself; leave it out")
        plan = _janus(model, input_ids, mask, scale)
    else:
        plan = _emu3(model, input_ids, mask, sizes, scale, negative_input_ids)
    if decoding.init == "row-above" and decoding.row_length is None:
        decoding = replace(decoding, row_length=plan.row_length)
    result = generate(plan.lm, plan.prompts, decoding, sampling, max_new_tokens=plan.max_new_tokens,
                      guidance=plan.guidance, processors=plan.processors, generator=generator,
                      eos_token_id=plan.eos, progress=progress)
    sequences = torch.stack(result.tokens)  # (B, N)
    with torch.inference_mode():
        image_tokens, pixels = plan.finish(sequences, decode_pixels)
    return ImageResult(sequences=sequences, image_tokens=image_tokens, pixels=pixels, stats=result.stats)


def _family(model: Any) -> str:
    name = type(model).__name__
    for cls in type(model).__mro__:  # the transformers class itself or a subclass of it
        if cls.__name__ in SUPPORTED and cls.__module__.startswith("transformers."):
            return SUPPORTED[cls.__name__]
    supported = ", ".join(SUPPORTED)
    if "image" not in tuple(getattr(model, "output_modalities", ()) or ()):
        raise ValueError(f"{name} generates no images (a text-only model); generate_image decodes the image-token "
                         f"models {supported}; for text use jacobix.generate")
    raise ValueError(f"{name} is not supported by generate_image; supported: {supported}")


def _check_scale(scale: Any) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1: no guidance), got {scale!r}")
    return float(scale)


def _check_decoding(decoding: Any) -> None:
    if not isinstance(decoding, Decoding):
        raise ValueError(f"decoding must be a jacobix Decoding, got {type(decoding).__name__}")
    if isinstance(decoding.init, str) and decoding.init not in GRID_INITS:
        raise ValueError(f"decoding.init={decoding.init!r}: image grids of transformers models draft with "
                         f"{', '.join(GRID_INITS)} (there are no draft tables for them), or a DraftInit callable")
    if decoding.lookahead:
        raise ValueError("decoding.lookahead drafts from the prompt's text; image grids draft from the grid: "
                         "use lookahead=False with init='row-above'")
    if decoding.method == "sjd2":
        raise ValueError("method 'sjd2' needs a model fine-tuned for it; use 'ar', 'jacobi', 'sjd' or 'sjd-coupled'")


def _unpack(inputs: Any) -> tuple[Tensor, Tensor | None, Any]:
    """(input_ids (B, L), attention_mask or None, image_sizes or None) from a processor output or a tensor."""
    if isinstance(inputs, Tensor):
        input_ids, mask, sizes = inputs, None, None
    elif isinstance(inputs, Mapping) and "input_ids" in inputs:
        input_ids, mask, sizes = inputs["input_ids"], inputs.get("attention_mask"), inputs.get("image_sizes")
    else:
        raise ValueError("inputs must be the processor's output (with input_ids) or a (batch, length) tensor of ids")
    input_ids = input_ids[None] if input_ids.dim() == 1 else input_ids
    if input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be (batch, length) token ids, got shape {tuple(input_ids.shape)}")
    if mask is not None:
        kept = mask.long().cumsum(1) > 0  # (B, L) from each row's first real token on
        if tuple(mask.shape) != tuple(input_ids.shape) or not bool((mask.bool() == kept).all()):
            raise ValueError("attention_mask must pad on the left (set processor.tokenizer.padding_side = 'left')")
    return input_ids, mask, sizes


def _rows(input_ids: Tensor, mask: Tensor | None) -> tuple[list[Tensor], Tensor]:
    """Unpadded prompts and each row's left-padding count (B,)."""
    if mask is None:
        return list(input_ids), torch.zeros(len(input_ids), dtype=torch.long)
    pads = (mask == 0).long().sum(1).cpu()
    return [row[int(p):] for row, p in zip(input_ids, pads)], pads


def _check_context(model: Any, length: int, new: int) -> None:
    limit = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
    if limit is not None and length + new > int(limit):
        raise ValueError(f"the image grid does not fit the context: prompt ({length}) + image ({new} tokens) > "
                         f"max_position_embeddings={limit}; shorten the prompt or ask for a smaller image")


def _janus(model: Any, input_ids: Tensor, mask: Tensor | None, scale: float | None) -> _Plan:
    ids = janus_ids(model)
    prompts, pads = _rows(input_ids, mask)
    for b, row in enumerate(prompts):
        if int(row[-1]) != ids["boi"]:
            raise ValueError(f"prompt {b} does not end with Janus's image-start token {ids['boi']}; build it with "
                             "processor(text=..., generation_mode='image')")
    height, width = janus_grid(model)
    _check_context(model, input_ids.shape[1], height * width)
    scale = scale if scale is not None else float(model.generation_config.guidance_scale or 5.0)
    lengths = torch.tensor([len(p) for p in prompts])
    lm = JanusImageLM(model, lengths, pads)
    guidance = Guidance(scale=scale, negative_input_ids=[janus_unconditional(p, ids) for p in prompts])

    def finish(sequences: Tensor, pixels: bool) -> tuple[Tensor, Tensor | None]:
        decoded = model.decode_image_tokens(sequences.to(model.device)) if pixels else None
        return sequences.view(-1, height, width), decoded

    return _Plan(lm, prompts, guidance, (), height * width, width, None, finish)


def _emu3(model: Any, input_ids: Tensor, mask: Tensor | None, sizes: Any, scale: float | None,
          negative: Any) -> _Plan:
    ids = emu3_ids(model)
    prompts, _ = _rows(input_ids, mask)
    starts = []
    for b, row in enumerate(prompts):
        found = torch.nonzero(row == ids["wrapper"], as_tuple=True)[0]
        if len(found) == 0:
            raise ValueError(f"prompt {b} has no image marker {ids['wrapper']} (<|image token|>); build it with "
                             "processor(text=..., return_for_image_generation=True)")
        starts.append(len(row) - int(found[0]))
    height, width = _emu3_grid(model, prompts, sizes, ids)
    new = (width + 1) * height + 3
    _check_context(model, max(len(p) for p in prompts), new)
    scale = scale if scale is not None else float(model.generation_config.guidance_scale or 1.0)
    guidance = None
    if scale != 1.0:
        negative = [p[-1:] for p in prompts] if negative is None else negative
        guidance = Guidance(scale=scale, negative_input_ids=negative)
    visual = torch.zeros(int(model.get_output_embeddings().weight.shape[0]), dtype=torch.bool)
    visual[list(model.vocabulary_mapping.image_tokens)] = True
    grid = Emu3ImageGrid(height, width, torch.tensor(starts), visual, ids)

    def finish(sequences: Tensor, pixels: bool) -> tuple[Tensor, Tensor | None]:
        rows = sequences[:, :-3].reshape(-1, height, width + 1)  # (B, H, W + 1)
        codes = model.vocabulary_mapping.convert_bpe2img(rows).long()  # (B, H, W)
        decoded = model.decode_image_tokens(image_tokens=sequences.to(model.device), height=height,
                                            width=width) if pixels else None
        return codes, decoded

    return _Plan(HFCausalLM(model), prompts, guidance, (grid,), new, width + 1, ids["eos"], finish)


def _emu3_grid(model: Any, prompts: Sequence[Tensor], sizes: Any, ids: dict[str, int]) -> tuple[int, int]:
    """One (height, width) for the batch: ``image_sizes`` when given, else what the prompts write."""
    grids = [tuple(int(v) for v in s) for s in sizes] if sizes is not None else \
        [emu3_grid_from_prompt(model, p, ids) for p in prompts]
    if any(g is None or len(g) != 2 for g in grids):
        raise ValueError("the image size is neither in inputs['image_sizes'] nor written in every prompt as "
                         "<|image start|>H*W<|image token|>; build inputs with processor(..., return_for_image_generation=True)")
    if len(set(grids)) != 1:
        raise ValueError(f"one image size per batch, got {sorted(set(grids))}; decode the sizes in separate calls")
    height, width = grids[0]
    if height < 1 or width < 1:
        raise ValueError(f"image size {height}x{width} tokens: both must be >= 1")
    return height, width


__all__ = ["ImageResult", "SUPPORTED", "generate_image"]
