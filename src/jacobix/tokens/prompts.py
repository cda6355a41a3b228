"""Prompts in, first token out: packing ragged prompts and the prefill pass."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from jacobix.core.sampling import process_logits, sample, target_probs
from jacobix.models.protocol import CausalLM
from jacobix.tokens.verify import Verifier

Prompt = Tensor | Sequence[Sequence[int]] | Sequence[Tensor]


def pack_prompts(prompts: Prompt, vocab_size: int, name: str) -> tuple[Tensor, Tensor]:
    """Right-pad prompts into (B, L) long and their lengths (B,), refusing anything but integer token ids."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (Tensor, Sequence)):
        raise ValueError(f"{name} must be token ids (a tensor or a list of lists of ints), got {type(prompts).__name__}; "
                         "encode text with the model's tokenizer first")
    if isinstance(prompts, Tensor):
        if prompts.dim() == 1:
            prompts = prompts[None]
        if prompts.dim() != 2:
            raise ValueError(f"{name} must be 1-D or 2-D (batch, length), got shape {tuple(prompts.shape)}")
        rows = list(prompts)
    else:
        rows = [_row(row, name) for row in prompts]
    if not rows:
        raise ValueError(f"{name} is empty: give at least one prompt")
    if any(row.is_floating_point() or row.is_complex() or row.dtype == torch.bool for row in rows):
        raise ValueError(f"{name} must hold integer token ids, got {rows[0].dtype}; convert with .long() if they are ids")
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    if int(lengths.min()) == 0:
        raise ValueError(f"{name} has an empty prompt; every row needs at least one token (e.g. a BOS token)")
    packed = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, row in enumerate(rows):
        if row.dim() != 1:
            raise ValueError(f"{name}: each prompt must be a 1-D sequence of token ids")
        packed[i, : len(row)] = row.to(torch.long)
    if int(packed.min()) < 0 or int(packed.max()) >= vocab_size:
        raise ValueError(f"{name} holds token ids outside [0, {vocab_size}) of this model's vocabulary")
    return packed, lengths


def _row(row: Any, name: str) -> Tensor:
    if isinstance(row, (str, bytes)) or not isinstance(row, (Tensor, Sequence)):
        raise ValueError(f"{name}: each prompt must be a sequence of token ids, got {type(row).__name__}")
    if not isinstance(row, Tensor) and any(isinstance(t, bool) or not isinstance(t, int) for t in row):
        raise ValueError(f"{name} must hold integer token ids, got {[t for t in row if not isinstance(t, int)][:3]}")
    return torch.as_tensor(row) if isinstance(row, Tensor) or len(row) else torch.zeros(0, dtype=torch.long)


def prefill(model: CausalLM, cache: Any, prompts: Tensor, lengths: Tensor, uncond: Tensor | None,
            uncond_lengths: Tensor | None, candidates: int) -> Tensor:
    """Write every prompt token into the cache; return the logits after each prompt (B, V), then
    after each unconditional prompt (B, V) with guidance. Each row is repeated ``candidates`` times
    (sibling rows that verify different candidates share the prompt)."""
    rows, row_lengths = [prompts], [lengths]
    if uncond is not None:
        width = max(prompts.shape[1], uncond.shape[1])
        rows = [torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in (prompts, uncond)]
        row_lengths = [lengths, uncond_lengths]
    tokens = torch.cat(rows).repeat(candidates, 1)  # (M, L) candidate-major: row i * B + b
    last = torch.cat(row_lengths).repeat(candidates) - 1  # (M,)
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    logits = model.forward(tokens, positions, cache)  # (M, L, V)
    first = len(last) // candidates  # the rows of candidate 0 (conditional, then unconditional, rows)
    return logits[torch.arange(first, device=last.device), last[:first]]  # (B or 2B, V)


def first_tokens(verifier: Verifier, logits: Tensor) -> Tensor:
    """The first new token of each row (B,) from the prefill logits, drawn as any later token is."""
    b = len(verifier.prompt_length)
    if verifier.guidance is not None:
        cond, uncond = logits[:b], logits[b:]
        logits = uncond + verifier.guidance.scale * (cond - uncond)
    new_positions = torch.zeros(b, 1, dtype=torch.long, device=logits.device)
    processed = process_logits(logits[:, None], new_positions, verifier.sampling, verifier.processors)[:, 0]  # (B, V)
    if verifier.sampling.greedy:
        return processed.argmax(-1)
    return sample(target_probs(processed).to(verifier.prob_dtype), verifier.generator)


def model_device(model: CausalLM) -> torch.device:
    first = _first_parameter(model)
    return first.device if first is not None else torch.device("cpu")


def model_dtype(model: CausalLM) -> torch.dtype:
    first = _first_parameter(model)
    return first.dtype if first is not None else torch.float32


def _first_parameter(model: CausalLM) -> Tensor | None:
    parameters = getattr(model, "parameters", None)
    return next(iter(parameters()), None) if parameters else None


__all__ = ["Prompt", "first_tokens", "model_device", "model_dtype", "pack_prompts", "prefill"]
