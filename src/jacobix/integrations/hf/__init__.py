"""The Hugging Face transformers integration: the one package of jacobix that imports ``transformers``.

- :mod:`~jacobix.integrations.hf.cache`: a transformers ``Cache`` written by absolute position.
- :mod:`~jacobix.integrations.hf.adapter`: :class:`HFCausalLM` (a transformers causal LM as a
  jacobix ``CausalLM``), :func:`check_supported`, :class:`HFProcessors`.
- :mod:`~jacobix.integrations.hf.custom_generate`: :func:`jacobi_generate`, :func:`sjd_generate`
  and :func:`lookahead_generate` for ``hf_model.generate(custom_generate=...)``.
- :mod:`~jacobix.integrations.hf.image`: :func:`generate_image` for Janus and Emu3 image-token models.
- :mod:`~jacobix.integrations.hf.gguf`: :func:`load_gguf_cached`, GGUF files offline.

transformers itself is imported on first use, so importing this package needs only torch.
"""

from __future__ import annotations

from jacobix.integrations.hf.adapter import (
    HFCausalLM,
    HFProcessors,
    as_causal_lm,
    check_supported,
    is_transformers_model,
)
from jacobix.integrations.hf.custom_generate import (jacobi_generate, lookahead_generate, sjd_generate,
                                                     specs_from_generation_config)
from jacobix.integrations.hf.gguf import load_gguf_cached
from jacobix.integrations.hf.image import ImageResult, generate_image

__all__ = [
    "HFCausalLM",
    "HFProcessors",
    "ImageResult",
    "as_causal_lm",
    "check_supported",
    "generate_image",
    "is_transformers_model",
    "jacobi_generate",
    "load_gguf_cached",
    "lookahead_generate",
    "sjd_generate",
    "specs_from_generation_config",
]
