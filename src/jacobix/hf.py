"""``jacobix.hf``: the Hugging Face transformers adapter under its short name.

The same objects as :mod:`jacobix.integrations.hf` (the one package that imports transformers):
``jacobi_generate``, ``sjd_generate`` and ``lookahead_generate`` for
``hf_model.generate(custom_generate=...)``, :class:`HFCausalLM` and :func:`as_causal_lm` to wrap
a transformers causal LM, and :func:`load_gguf_cached` for GGUF files offline. transformers is
imported on first use, so ``import jacobix.hf`` needs only torch.
"""

from __future__ import annotations

from jacobix.integrations.hf import (
    HFCausalLM,
    HFProcessors,
    as_causal_lm,
    check_supported,
    is_transformers_model,
    jacobi_generate,
    load_gguf_cached,
    lookahead_generate,
    sjd_generate,
    specs_from_generation_config,
)

__all__ = [
    "HFCausalLM",
    "HFProcessors",
    "as_causal_lm",
    "check_supported",
    "is_transformers_model",
    "jacobi_generate",
    "load_gguf_cached",
    "lookahead_generate",
    "sjd_generate",
    "specs_from_generation_config",
]
