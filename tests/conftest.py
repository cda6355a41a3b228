"""Shared fixtures: tiny random models and independent reference decoders (no cache, no engine)."""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile

import pytest
import torch

from jacobix.models import Llama, LlamaConfig
from jacobix.core.sampling import SamplingConfig

# Tests never reach a model hub: every model is built locally or read from an installed wheel.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models gain nothing from threads, and idle OpenMP threads spin on a shared 2-core machine.
torch.set_num_threads(1)
# Pass-cost calibrations that window="auto" saves go to a folder of this run, never the user's cache.
_COSTS = tempfile.TemporaryDirectory(prefix="jacobix-costs-")
os.environ["JACOBIX_COSTS"] = _COSTS.name


@pytest.fixture(scope="session", autouse=True)
def ray_temp_dir():
    """Ray's sessions (sockets, logs, spilled objects) go to a folder of this run, removed at its end,
    instead of piling up under /tmp/ray."""
    folder = tempfile.mkdtemp(prefix="jxray-")  # short: Ray's socket paths must stay under 107 characters
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = folder
    yield folder
    if previous is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = previous
    shutil.rmtree(folder, ignore_errors=True)


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


def reference_probs(logits: torch.Tensor, *, temperature: float, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """Sampling distributions (N, V) float64 from raw logits (N, V), by plain Python loops.

    The independent reference of the library's temperature -> top-k -> top-p processing:
    divide by the temperature once; keep every token whose logit is at least the k-th largest
    (ties kept); softmax over the kept tokens; keep the most likely tokens while the mass of
    those already kept is below p; renormalise. Non-finite logits are never kept.
    """
    rows = []
    for row in logits.double().tolist():
        scaled = [x / temperature for x in row]
        keep = [i for i, x in enumerate(scaled) if math.isfinite(x)]
        if top_k is not None:
            ranked = sorted((scaled[i] for i in keep), reverse=True)
            kth = ranked[min(top_k, len(ranked)) - 1]
            keep = [i for i in keep if scaled[i] >= kth]
        top = max(scaled[i] for i in keep)
        weight = {i: math.exp(scaled[i] - top) for i in keep}
        if top_p is not None and top_p < 1.0:
            total, mass, nucleus = sum(weight.values()), 0.0, {}
            for i in sorted(weight, key=lambda i: -weight[i]):
                if mass >= top_p:
                    break
                nucleus[i] = weight[i]
                mass += weight[i] / total
            weight = nucleus
        total = sum(weight.values())
        rows.append([weight.get(i, 0.0) / total for i in range(len(row))])
    return torch.tensor(rows, dtype=torch.float64)


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
    """Probability of every sequence of ``length`` new tokens under sequential sampling.

    Built from the model's raw logits (one cache-free forward over the whole sequence) with
    :func:`reference_probs`, so it shares no code with the library's sampling path.
    """
    vocab = model.vocab_size
    joint = {}
    for sequence in itertools.product(range(vocab), repeat=length):
        logits = _row_logits(model, prompt, sequence)
        if negative is not None:
            uncond = _row_logits(model, negative, sequence)
            logits = uncond + cfg_scale * (logits - uncond)
        probs = reference_probs(logits, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
        joint[sequence] = math.prod(float(probs[t, token]) for t, token in enumerate(sequence))
    return joint


def _row_logits(model: Llama, prompt: list[int], sequence: tuple[int, ...]) -> torch.Tensor:
    tokens = torch.tensor(list(prompt) + list(sequence))[None]
    return model(tokens)[0, len(prompt) - 1 : len(prompt) - 1 + len(sequence)]  # (length, V)

