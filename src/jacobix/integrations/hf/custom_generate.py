"""jacobix inside transformers: ``hf_model.generate(ids, custom_generate=jacobi_generate)``.

:func:`jacobi_generate`, :func:`sjd_generate` and :func:`lookahead_generate` take what
transformers hands a custom decoding callable (input ids, logits processors, stopping criteria,
GenerationConfig, model keyword arguments), run :func:`jacobix.tokens.generate.generate` on the
adapter of :mod:`jacobix.integrations.hf.adapter`, and return the tensor greedy ``generate``
would: (B, L + N), right-padded with ``pad_token_id``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from jacobix.integrations.hf._deps import require_transformers
from jacobix.integrations.hf.adapter import HFCausalLM, HFProcessors
from jacobix.tokens.generate import generate


def _split_processors(processors: Sequence[Any] | None) -> list[Any]:
    """Drop temperature/top-k/top-p warpers (jacobix applies them from GenerationConfig); keep the rest."""
    g = require_transformers().generation
    mapped = tuple(getattr(g, n) for n in ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"))
    return [p for p in processors or () if not isinstance(p, mapped)]


def _single_eos(config: Any) -> int | None:
    eos = config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if len(set(eos)) > 1:
        raise ValueError(f"jacobix stops on one eos_token_id; generation_config has {eos}: set eos_token_id=<one id>")
    return eos[0] if eos else None


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


def _hf_generate(model: Any, input_ids: Tensor, method: str, logits_processor: Any, stopping_criteria: Any,
                 generation_config: Any, options: dict[str, Any], model_kwargs: dict[str, Any]) -> Tensor:
    g = require_transformers().generation
    config = generation_config if generation_config is not None else model.generation_config
    if config.num_beams not in (None, 1) or (config.num_return_sequences or 1) > 1 or config.return_dict_in_generate:
        raise ValueError("jacobix custom_generate returns one sequence per prompt: use num_beams=1, "
                         "num_return_sequences=1, return_dict_in_generate=False")
    if bool(config.do_sample) != (method == "sjd"):
        fix = "sjd_generate for do_sample=True" if config.do_sample else "jacobi_generate for greedy decoding"
        raise ValueError(f"custom_generate: use jacobix.integrations.hf.{fix}")
    lm = HFCausalLM(model)
    prompts = _prompts(input_ids, model_kwargs.get("attention_mask"))
    max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - input_ids.shape[1]
    eos = _single_eos(config)
    processors = _split_processors(logits_processor)
    sampling = dict(temperature=config.temperature or 1.0, top_k=config.top_k, top_p=config.top_p) if config.do_sample else {}
    pad = config.pad_token_id if config.pad_token_id is not None else (eos if eos is not None else 0)
    if processors:
        lengths = torch.tensor([len(p) for p in prompts])
        processors = [HFProcessors(lm, processors, input_ids, lengths, int(pad))]
    result = generate(lm, prompts, method=method, max_new_tokens=max_new, eos_token_id=eos,
                      processors=processors, **sampling, **options)
    custom = [c for c in stopping_criteria or () if not isinstance(c, (g.MaxLengthCriteria, g.EosTokenCriteria))]
    rows = _stop_early(result.tokens, prompts, custom) if custom else result.tokens
    width = max(len(r) for r in rows)
    out = input_ids.new_full((input_ids.shape[0], input_ids.shape[1] + width), int(pad))  # (B, L + N)
    out[:, : input_ids.shape[1]] = input_ids
    for b, row in enumerate(rows):
        out[b, input_ids.shape[1] : input_ids.shape[1] + len(row)] = row.to(out.device)
    return out


def jacobi_generate(model: Any, input_ids: Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
                    generation_config: Any = None, window: int | str = "auto", lookahead: bool = False,
                    **model_kwargs: Any) -> Tensor:
    """Greedy Jacobi decoding for ``hf_model.generate(..., custom_generate=jacobi_generate)``.

    Returns the same (B, L + N) tensor as greedy ``generate`` (right-padded with pad_token_id).
    ``window`` ("auto" or tokens per pass) and ``lookahead`` (n-gram pool drafts) pass through
    ``generate``'s keyword arguments. transformers does not forward ``streamer`` to custom
    callables; stream with ``jacobix.generate(hf_model, ids, streamer=...)`` instead.
    """
    options = dict(window=window, lookahead=lookahead)
    return _hf_generate(model, input_ids, "jacobi", logits_processor, stopping_criteria, generation_config,
                        options, model_kwargs)


def lookahead_generate(model: Any, input_ids: Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
                       generation_config: Any = None, window: int | str = "auto", generator: Any = None,
                       **model_kwargs: Any) -> Tensor:
    """Jacobi (greedy) or SJD (``do_sample=True``) with n-gram pool drafts and an adaptive window."""
    config = generation_config if generation_config is not None else model.generation_config
    method = "sjd" if config.do_sample else "jacobi"
    options = dict(window=window, lookahead=True, generator=generator)
    return _hf_generate(model, input_ids, method, logits_processor, stopping_criteria, generation_config,
                        options, model_kwargs)


def sjd_generate(model: Any, input_ids: Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
                 generation_config: Any = None, window: int | str = "auto", lookahead: bool = False,
                 generator: Any = None, **model_kwargs: Any) -> Tensor:
    """Speculative Jacobi decoding (lossless sampling) for ``custom_generate`` with ``do_sample=True``.

    ``generator`` (a ``torch.Generator``) makes the draw reproducible.
    """
    options = dict(window=window, lookahead=lookahead, generator=generator)
    return _hf_generate(model, input_ids, "sjd", logits_processor, stopping_criteria, generation_config,
                        options, model_kwargs)


__all__ = ["jacobi_generate", "lookahead_generate", "sjd_generate"]
