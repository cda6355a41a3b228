"""jacobix inside transformers: ``hf_model.generate(ids, custom_generate=jacobi_generate)``.

:func:`jacobi_generate`, :func:`sjd_generate` and :func:`lookahead_generate` take what
transformers hands a custom decoding callable (input ids, logits processors, stopping criteria,
GenerationConfig, model keyword arguments), run :func:`jacobix.tokens.generate.generate` on the
adapter of :mod:`jacobix.integrations.hf.adapter`, and return the tensor greedy ``generate``
would: (B, L + N), right-padded with ``pad_token_id`` (a ``GenerateDecoderOnlyOutput`` with
``sequences`` under ``return_dict_in_generate=True``). transformers' guidance (``guidance_scale``,
``negative_prompt_ids``) is mapped to jacobix's classifier-free guidance; its processor assumes
one new token per call and would silently guide the wrong positions inside a window.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor

from jacobix.integrations.hf._deps import require_transformers
from jacobix.integrations.hf.adapter import HFCausalLM, HFProcessors
from jacobix.core.sampling import SamplingConfig
from jacobix.tokens.decoding import Decoding, Guidance
from jacobix.tokens.generate import generate


# Processors that only set logits to -inf: a per-row constant (transformers guides log-probabilities,
# jacobix logits) changes nothing after them, so they combine with guidance exactly (Emu3's image
# constraint is a PrefixConstrainedLogitsProcessor).
MASKING_PROCESSORS = ("PrefixConstrainedLogitsProcessor", "SuppressTokensLogitsProcessor", "NoBadWordsLogitsProcessor")


def _split_processors(processors: Sequence[Any] | None) -> tuple[list[Any], Any | None]:
    """Drop temperature/top-k/top-p warpers (jacobix applies them from GenerationConfig); take out the
    guidance processor; keep the rest. Returns (kept processors, guidance processor or None)."""
    g = require_transformers().generation
    mapped = tuple(getattr(g, n) for n in ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"))
    guidance = tuple(getattr(g, n) for n in ("UnbatchedClassifierFreeGuidanceLogitsProcessor",
                                             "ClassifierFreeGuidanceLogitsProcessor") if hasattr(g, n))
    found = [p for p in processors or () if isinstance(p, guidance)]
    kept = [p for p in processors or () if not isinstance(p, (*mapped, *guidance))]
    return kept, (found[0] if found else None)


def _guidance(cfg: Any, input_ids: Tensor, others: list[Any]) -> Guidance | None:
    """transformers' guidance (``guidance_scale``, ``negative_prompt_ids``) as jacobix's own CFG.

    transformers' processor runs the unconditional prompt (``negative_prompt_ids``, else each
    row's last prompt token) at positions 0, 1, ... and then one new token per call; jacobix's
    ``cfg_scale`` / ``negative_input_ids`` guide the same unconditional rows over a whole window
    per pass. Both combine log-probabilities ``uncond + scale * (cond - uncond)`` (equal up to a
    per-row constant, so argmax and softmax agree, also after the masking processors of
    :data:`MASKING_PROCESSORS`).
    """
    if cfg is None:
        return None
    shifting = [p for p in others if type(p).__name__ not in MASKING_PROCESSORS]
    if shifting:
        names = ", ".join(type(p).__name__ for p in shifting)
        raise ValueError(f"custom_generate: guidance_scale together with other logits processors ({names}) is not "
                         "supported (transformers applies them to guided log-probabilities; only masking ones "
                         f"combine: {', '.join(MASKING_PROCESSORS)}); drop one of them")
    negative, mask = cfg.unconditional_context["input_ids"], cfg.unconditional_context["attention_mask"]
    if negative is None:
        negative = input_ids[:, -1:]  # (B, 1) transformers' default unconditional prompt
    elif mask is not None and not bool(mask.bool().all()):
        raise ValueError("custom_generate: a padded negative_prompt_attention_mask is not supported (transformers "
                         "numbers the padded positions, jacobix would not); pass negative prompts of one length")
    if negative.shape[0] != input_ids.shape[0]:
        raise ValueError(f"negative_prompt_ids has {negative.shape[0]} rows but input_ids has {input_ids.shape[0]}")
    return Guidance(scale=float(cfg.guidance_scale), negative_input_ids=negative)


def _eos_ids(config: Any) -> list[int]:
    """The GenerationConfig's EOS ids as a list (transformers allows one id or a list)."""
    eos = config.eos_token_id
    if isinstance(eos, Tensor):
        eos = eos.tolist()
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos or []]


def _check_config(config: Any) -> None:
    """Refuse GenerationConfig settings that custom_generate cannot honour, naming the fix."""
    if config.num_beams not in (None, 1) or (config.num_return_sequences or 1) > 1:
        raise ValueError("jacobix custom_generate returns one sequence per prompt: use num_beams=1, num_return_sequences=1")
    unsupported = [name for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states")
                   if getattr(config, name, False)]
    if unsupported:
        raise ValueError(f"jacobix custom_generate does not return {', '.join(unsupported)} (it keeps no per-token "
                         "scores, logits, attentions or hidden states); drop them: with return_dict_in_generate=True "
                         "the output carries `sequences` only")


def _prompts(input_ids: Tensor, attention_mask: Tensor | None) -> list[Tensor]:
    """Per-row prompts (L_b,) with (left or right) padding removed by the attention mask."""
    if attention_mask is None:
        return list(input_ids)
    return [row[keep.bool()] for row, keep in zip(input_ids, attention_mask)]


def _stop_early(rows: list[Tensor], prompts: list[Tensor], criteria: Sequence[Any]) -> list[Tensor]:
    """Cut each row where a user StoppingCriteria first fires (they are pure functions of the prefix)."""
    out = []
    for prompt, row in zip(prompts, rows):
        cut = len(row)
        for n in range(1, len(row) + 1):
            ids = torch.cat([prompt, row[:n].to(prompt.device)])[None]  # (1, L + n)
            if any(bool(torch.as_tensor(c(ids, None)).any()) for c in criteria):
                cut = n
                break
        out.append(row[:cut])
    return out


def specs_from_generation_config(config: Any, decoding: Decoding | None = None, **fields: Any
                                  ) -> tuple[Decoding, SamplingConfig]:
    """jacobix's specs from a transformers ``GenerationConfig``: the sampling half from ``do_sample``,
    ``temperature``, ``top_k`` and ``top_p``; the decoding half is ``decoding`` (default: greedy
    Jacobi, or SJD under ``do_sample``, with an adaptive window) with ``fields`` replaced.

    Raises:
        ValueError: a decoding whose method disagrees with ``do_sample`` (the message names the fix).
    """
    sampled = bool(config.do_sample)
    sampling = SamplingConfig(temperature=config.temperature or 1.0, top_k=config.top_k, top_p=config.top_p) \
        if sampled else SamplingConfig()
    if decoding is None:
        decoding = Decoding(method="sjd" if sampled else "jacobi", window="auto")
    elif not isinstance(decoding, Decoding):
        raise ValueError(f"custom_generate: decoding= takes a jacobix Decoding, got {type(decoding).__name__}")
    decoding = replace(decoding, **{k: v for k, v in fields.items() if v is not None})
    if decoding.spec.sampled is not None and decoding.spec.sampled != sampled:
        fix = "sjd_generate (or an SJD decoding) for do_sample=True" if sampled else "jacobi_generate for greedy decoding"
        raise ValueError(f"custom_generate: method {decoding.method!r} with do_sample={sampled}: use "
                         f"jacobix.integrations.hf.{fix}")
    return decoding, sampling


def _hf_generate(model: Any, input_ids: Tensor, specs: tuple[Decoding, SamplingConfig], logits_processor: Any,
                 stopping_criteria: Any, config: Any, request: dict[str, Any], model_kwargs: dict[str, Any]) -> Any:
    tf = require_transformers()
    if request.get("streamer") is not None and input_ids.shape[0] != 1:
        raise ValueError(f"jacobix_streamer follows one prompt, got {input_ids.shape[0]}; stream one prompt at a time")
    lm = HFCausalLM(model)
    prompts = _prompts(input_ids, model_kwargs.get("attention_mask"))
    max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - input_ids.shape[1]
    eos = _eos_ids(config)
    processors, cfg = _split_processors(logits_processor)
    guidance = _guidance(cfg, input_ids, processors)
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    if processors:
        lengths = torch.tensor([len(p) for p in prompts])
        processors = [HFProcessors(lm, processors, input_ids, lengths, int(pad))]
    result = generate(lm, prompts, *specs, max_new_tokens=max_new, eos_token_id=eos or None, processors=processors,
                      guidance=guidance, **request)
    g = tf.generation
    custom = [c for c in stopping_criteria or () if not isinstance(c, (g.MaxLengthCriteria, g.EosTokenCriteria))]
    rows = _stop_early(result.tokens, prompts, custom) if custom else result.tokens
    width = max(len(r) for r in rows)
    out = input_ids.new_full((input_ids.shape[0], input_ids.shape[1] + width), int(pad))  # (B, L + N)
    out[:, : input_ids.shape[1]] = input_ids
    for b, row in enumerate(rows):
        out[b, input_ids.shape[1] : input_ids.shape[1] + len(row)] = row.to(out.device)
    if config.return_dict_in_generate:
        return g.GenerateDecoderOnlyOutput(sequences=out)
    return out


def _config(model: Any, generation_config: Any) -> Any:
    config = generation_config if generation_config is not None else model.generation_config
    _check_config(config)
    return config


def jacobi_generate(model: Any, input_ids: Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
                    generation_config: Any = None, decoding: Decoding | None = None, window: int | str | None = None,
                    lookahead: bool | None = None, jacobix_streamer: Any = None, **model_kwargs: Any) -> Any:
    """Greedy Jacobi decoding for ``hf_model.generate(..., custom_generate=jacobi_generate)``.

    Keywords besides transformers' own: ``decoding`` (a :class:`~jacobix.tokens.decoding.Decoding`;
    default greedy Jacobi with ``window="auto"``), ``window`` and ``lookahead`` (shorthands that
    replace the decoding's), and ``jacobix_streamer`` (a streamer of committed tokens; transformers'
    own ``streamer`` keyword is consumed by ``generate``). Returns what greedy ``generate`` returns.
    transformers' ``guidance_scale`` / ``negative_prompt_ids`` become jacobix's classifier-free
    guidance; the EOS ids of the GenerationConfig (one or a list) stop a row.
    """
    config = _config(model, generation_config)
    if config.do_sample:
        raise ValueError("custom_generate: use jacobix.integrations.hf.sjd_generate for do_sample=True")
    specs = specs_from_generation_config(config, decoding, window=window, lookahead=lookahead)
    return _hf_generate(model, input_ids, specs, logits_processor, stopping_criteria, config,
                        dict(streamer=jacobix_streamer), model_kwargs)


def lookahead_generate(model: Any, input_ids: Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
                       generation_config: Any = None, decoding: Decoding | None = None, window: int | str | None = None,
                       generator: Any = None, jacobix_streamer: Any = None, **model_kwargs: Any) -> Any:
    """Jacobi (greedy) or SJD (``do_sample=True``) with n-gram pool drafts and an adaptive window.

    Keywords and return value as :func:`jacobi_generate` (``generator`` as :func:`sjd_generate`).
    """
    config = _config(model, generation_config)
    specs = specs_from_generation_config(config, decoding, window=window, lookahead=True)
    return _hf_generate(model, input_ids, specs, logits_processor, stopping_criteria, config,
                        dict(generator=generator, streamer=jacobix_streamer), model_kwargs)


def sjd_generate(model: Any, input_ids: Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
                 generation_config: Any = None, decoding: Decoding | None = None, window: int | str | None = None,
                 lookahead: bool | None = None, generator: Any = None, jacobix_streamer: Any = None,
                 **model_kwargs: Any) -> Any:
    """Speculative Jacobi decoding (lossless sampling) for ``custom_generate`` with ``do_sample=True``.

    ``generator`` (a ``torch.Generator``) makes the draw reproducible; the other keywords and the
    return value are those of :func:`jacobi_generate`.
    """
    config = _config(model, generation_config)
    if not config.do_sample:
        raise ValueError("custom_generate: use jacobix.integrations.hf.jacobi_generate for greedy decoding")
    specs = specs_from_generation_config(config, decoding, window=window, lookahead=lookahead)
    return _hf_generate(model, input_ids, specs, logits_processor, stopping_criteria, config,
                        dict(generator=generator, streamer=jacobix_streamer), model_kwargs)


__all__ = ["jacobi_generate", "lookahead_generate", "sjd_generate", "specs_from_generation_config"]
