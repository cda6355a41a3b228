"""Shared fixtures: tiny random models and independent reference decoders (no cache, no engine)."""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch

from jacobix.models import Llama, LlamaConfig
from jacobix.core.sampling import SamplingConfig

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


def read_png(path) -> "np.ndarray":
    """Decode an 8-bit, non-interlaced PNG (grey, RGB or RGBA) to (H, W) or (H, W, C) uint8.

    Written for the tests, independent of jacobix.eval.png: checks every chunk's CRC, undoes
    all five scanline filters, and reads the first frame of an animated PNG.
    """
    import struct
    import zlib

    import numpy as np

    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    offset, chunks = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8 and interlace == 0 and color in (0, 2, 6), (depth, color, interlace)
    channels = {0: 1, 2: 3, 6: 4}[color]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * channels
    assert len(raw) == height * (stride + 1), "scanline data does not match the header"
    rows, previous = [], np.zeros(stride, dtype=np.int64)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, scan = line[0], np.frombuffer(line[1:], dtype=np.uint8).astype(np.int64)
        out = np.zeros(stride, dtype=np.int64)
        for x in range(stride):
            left = out[x - channels] if x >= channels else 0
            up, corner = previous[x], (previous[x - channels] if x >= channels else 0)
            if kind == 0:
                base = 0
            elif kind == 1:
                base = left
            elif kind == 2:
                base = up
            elif kind == 3:
                base = (left + up) // 2
            else:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                base = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
            out[x] = (scan[x] + base) % 256
        rows.append(out)
        previous = out
    pixels = np.stack(rows).astype(np.uint8).reshape(height, width, channels)
    return pixels[..., 0] if channels == 1 else pixels
