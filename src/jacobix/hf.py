"""``jacobix.hf``: the Hugging Face transformers adapter under its short name.

The same objects as :mod:`jacobix.integrations.hf` (the one package that imports transformers):
``jacobi_generate``, ``sjd_generate`` and ``lookahead_generate`` for
``hf_model.generate(custom_generate=...)``, :class:`HFCausalLM` and :func:`as_causal_lm` to wrap
a transformers causal LM, :func:`generate_image` for Janus and Emu3 image grids, and
:func:`load_gguf_cached` for GGUF files offline. transformers is
imported on first use, so ``import jacobix.hf`` needs only torch.
"""

from __future__ import annotations

from jacobix.integrations import hf as _adapter
from jacobix.integrations.hf import *  # noqa: F401,F403  (the adapter's public names, one list)

__all__ = list(_adapter.__all__)
