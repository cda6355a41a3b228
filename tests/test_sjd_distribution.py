"""SJD is lossless: its samples follow the exact sequential-sampling joint of a toy model.

The toy model has 5 tokens, so the joint law of the first three generated tokens (125 cells)
can be enumerated. Each test draws a batch of rows in one call (rows are independent) and
runs a chi-square goodness-of-fit test. A deliberately wrong sampler must fail the same test.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import jacobix
from jacobix.tokens.proposers.basic import CopyInit, DraftContext
from jacobix.core.sampling import SamplingConfig

from conftest import exact_joint, tiny_model

VOCAB, LENGTH, SAMPLES = 5, 3, 6000
PROMPT = [1, 3, 0]


def chi_square_pvalue(samples: list[tuple[int, ...]], joint: dict[tuple[int, ...], float]) -> float:
    """Goodness of fit, pooling cells with expected count < 5 into one cell."""
    counts = Counter(samples)
    total = len(samples)
    observed, expected, pooled_obs, pooled_exp = [], [], 0.0, 0.0
    for cell, probability in joint.items():
        if probability * total >= 5:
            observed.append(counts.get(cell, 0))
            expected.append(probability * total)
        else:
            pooled_obs += counts.get(cell, 0)
            pooled_exp += probability * total
    if pooled_exp > 0:
        observed.append(pooled_obs)
        expected.append(pooled_exp)
    expected = np.array(expected) * (total / sum(expected))
    return float(chisquare(observed, expected).pvalue)


def draw(model, *, seed: int, **kwargs) -> list[tuple[int, ...]]:
    result = jacobix.generate(
        model, [PROMPT] * SAMPLES, max_new_tokens=LENGTH, generator=torch.Generator().manual_seed(seed), **kwargs
    )
    return [tuple(t.tolist()) for t in result.tokens]


@pytest.fixture(scope="module")
def toy():
    return tiny_model(11, vocab=VOCAB, dim=16)


CASES = {
    "t1-random-w4": dict(sampling=dict(temperature=1.0), init="random", window=4),
    "t1-repeat-w2": dict(sampling=dict(temperature=1.0), init="repeat", window=2),
    "t07-rowabove-w3": dict(sampling=dict(temperature=0.7), init=CopyInit(2), window=3),
    "topk3-random-w8": dict(sampling=dict(temperature=1.2, top_k=3), init="random", window=8),
    "topp-repeat-w4": dict(sampling=dict(temperature=1.0, top_p=0.8), init="repeat", window=4),
    "all-filters-w3": dict(sampling=dict(temperature=0.9, top_k=4, top_p=0.9), init="random", window=3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_sjd_matches_exact_joint(toy, name):
    case = CASES[name]
    joint = exact_joint(toy, PROMPT, LENGTH, SamplingConfig(**case["sampling"]))
    samples = draw(toy, seed=sorted(CASES).index(name), method="sjd", window=case["window"], init=case["init"], **case["sampling"])
    assert chi_square_pvalue(samples, joint) > 1e-3


def test_sjd_with_cfg_matches_exact_guided_joint(toy):
    sampling = SamplingConfig(temperature=1.0, top_k=4)
    negative = [2]
    joint = exact_joint(toy, PROMPT, LENGTH, sampling, negative=negative, cfg_scale=2.0)
    samples = draw(toy, seed=5, method="sjd", window=4, temperature=1.0, top_k=4, cfg_scale=2.0,
                   negative_input_ids=[negative] * SAMPLES)
    assert chi_square_pvalue(samples, joint) > 1e-3


def test_ar_sampling_matches_exact_joint(toy):
    joint = exact_joint(toy, PROMPT, LENGTH, SamplingConfig(temperature=1.0))
    samples = draw(toy, seed=6, method="ar", temperature=1.0)
    assert chi_square_pvalue(samples, joint) > 1e-3


class LyingInit:
    """Always drafts token 0 but claims it was drawn uniformly: breaks the lossless guarantee."""

    def __call__(self, context: DraftContext):
        b, d = context.positions.shape
        uniform = torch.full((b, d, context.vocab_size), 1.0 / context.vocab_size)
        return torch.zeros(b, d, dtype=torch.long), uniform


def test_the_chi_square_test_detects_a_biased_sampler(toy):
    joint = exact_joint(toy, PROMPT, LENGTH, SamplingConfig(temperature=1.0))
    samples = draw(toy, seed=7, method="sjd", window=4, init=LyingInit(), temperature=1.0)
    assert chi_square_pvalue(samples, joint) < 1e-6


def test_sjd_is_seed_deterministic(toy):
    kwargs = dict(method="sjd", window=4, temperature=1.0, max_new_tokens=12)
    first = jacobix.generate(toy, [PROMPT] * 8, generator=torch.Generator().manual_seed(3), **kwargs)
    again = jacobix.generate(toy, [PROMPT] * 8, generator=torch.Generator().manual_seed(3), **kwargs)
    other = jacobix.generate(toy, [PROMPT] * 8, generator=torch.Generator().manual_seed(4), **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(first.tokens, again.tokens))
    assert first.stats.forward_passes == again.stats.forward_passes
    assert any(not torch.equal(a, b) for a, b in zip(first.tokens, other.tokens))


def test_sjd_rows_advance_independently(toy):
    result = jacobix.generate(toy, [PROMPT] * 64, method="sjd", window=6, temperature=1.0, max_new_tokens=20,
                              generator=torch.Generator().manual_seed(0))
    committed = result.stats.committed_per_pass  # (P, B)
    assert all(len(t) == 20 for t in result.tokens)
    assert (committed[0] != committed[0, 0]).any(), "rows accepted different lengths in one pass"
