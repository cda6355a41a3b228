"""Baselines the benchmarks compare jacobix with: transformers' own ``generate``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from jacobix.core.timing import clock


def transformers_generate(model: Any, prompt: Tensor, *, max_new_tokens: int, eos_token_id: int | None,
                          prompt_lookup_num_tokens: int | None = None) -> tuple[Tensor, int, float]:
    """transformers' own greedy ``generate`` (optionally prompt-lookup decoding) on one prompt (L,).

    Args:
        model: a transformers causal LM.
        prompt: (L,) token ids.
        max_new_tokens: the generation budget.
        eos_token_id: stop token (also used as padding), or None.
        prompt_lookup_num_tokens: draft length of prompt-lookup decoding, or None for plain greedy.

    Returns:
        The new tokens (EOS included, padding cut), the decoding passes (prefill excluded,
        counted by a forward hook) and the wall time in seconds.
    """
    calls = [0]
    hook = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        start = clock(prompt.device)
        out = model.generate(prompt[None], attention_mask=torch.ones_like(prompt)[None], do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
                             prompt_lookup_num_tokens=prompt_lookup_num_tokens)
        elapsed = clock(prompt.device) - start
    finally:
        hook.remove()
    new = out[0, len(prompt) :]
    if eos_token_id is not None and bool((new == eos_token_id).any()):
        new = new[: int((new == eos_token_id).nonzero()[0]) + 1]
    return new, calls[0] - 1, elapsed


__all__ = ["transformers_generate"]
