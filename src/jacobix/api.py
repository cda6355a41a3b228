"""The top-level ``jacobix.generate``: jacobix models as they are, transformers models through
the adapter (:mod:`jacobix.integrations.hf`, imported only when one is given)."""

from __future__ import annotations

import functools
from typing import Any

from jacobix.tokens.generate import generate as _generate
from jacobix.tokens.result import GenerateResult


@functools.wraps(_generate)
def generate(model: Any, input_ids: Any, **options: Any) -> GenerateResult:
    if any(c.__module__.startswith("transformers.") for c in type(model).__mro__):
        from jacobix.integrations.hf import as_causal_lm

        model = as_causal_lm(model)
    return _generate(model, input_ids, **options)


__all__ = ["generate"]
