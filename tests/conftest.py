"""Shared fixtures: tiny random models and independent reference decoders (no cache, no engine)."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from jacobix.models import Llama, LlamaConfig
from jacobix.core.sampling import SamplingConfig, process_logits, target_probs

# Tests never reach a model hub: every model is built locally or read from an installed wheel.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models gain nothing from threads, and idle OpenMP threads spin on a shared 2-core machine.
torch.set_num_threads(1)


def tiny_model(seed: int = 0, vocab: int = 11, *, dim: int = 32, layers: int = 2, dtype=torch.float64) -> Llama:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, dim=dim, num_layers=layers, num_heads=4, num_kv_heads=2, hidden_dim=2 * dim)
    model = Llama(config).to(dtype).eval()
    with torch.no_grad():  # sharper logits than the default init, so sequences are not all one loop
        model.output.weight.mul_(4.0)
    return model


@pytest.fixture
def model() -> Llama:
    return tiny_model()


@torch.no_grad()
def naive_greedy(model: Llama, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding by recomputing the whole sequence each step (the reference)."""
    sequence = prompt[None].clone()
    for _ in range(new_tokens):
        nxt = model(sequence)[:, -1].argmax(-1)
        sequence = torch.cat([sequence, nxt[:, None]], dim=1)
    return sequence[0, len(prompt) :]


@torch.no_grad()
def exact_joint(
    model: Llama,
    prompt: list[int],
    length: int,
    sampling: SamplingConfig,
    *,
    negative: list[int] | None = None,
    cfg_scale: float = 1.0,
) -> dict[tuple[int, ...], float]:
    """Probability of every sequence of ``length`` new tokens under sequential sampling."""
    vocab = model.vocab_size
    joint = {}
    for sequence in itertools.product(range(vocab), repeat=length):
        logits = _row_logits(model, prompt, sequence)
        if negative is not None:
            uncond = _row_logits(model, negative, sequence)
            logits = uncond + cfg_scale * (logits - uncond)
        new_positions = torch.arange(length)[None]
        probs = target_probs(process_logits(logits[None], new_positions, sampling))[0]  # (length, V)
        joint[sequence] = float(torch.prod(probs[torch.arange(length), torch.tensor(sequence)]))
    return joint


def _row_logits(model: Llama, prompt: list[int], sequence: tuple[int, ...]) -> torch.Tensor:
    tokens = torch.tensor(list(prompt) + list(sequence))[None]
    return model(tokens)[0, len(prompt) - 1 : len(prompt) - 1 + len(sequence)]  # (length, V)
