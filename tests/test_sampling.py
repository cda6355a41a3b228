"""The sampling transforms on hand-built logits, with every expected answer worked out by hand.

Nothing here calls one library function to check another: each expected tensor is written out
in the test (ties at the k-th value, a nucleus boundary exactly at p, temperature applied once,
the order processors -> temperature -> top-k -> top-p).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from jacobix.core.sampling import SamplingConfig, process_logits, sample, target_probs, top_k_filter, top_p_filter

INF = float("inf")


def logits_of(probs: list[float]) -> torch.Tensor:
    """Float64 logits whose softmax is ``probs`` (-inf where a probability is 0)."""
    return torch.tensor([math.log(p) if p > 0 else -INF for p in probs], dtype=torch.float64)


def kept(logits: torch.Tensor) -> list[int]:
    """Indices of the finite entries of a 1-D tensor."""
    return torch.isfinite(logits).nonzero().flatten().tolist()


# --- top-k -------------------------------------------------------------------------------------


def test_top_k_keeps_the_k_largest_and_masks_the_rest():
    logits = torch.tensor([0.5, 4.0, -1.0, 3.0, 2.0])
    assert kept(top_k_filter(logits, 1)) == [1]
    assert kept(top_k_filter(logits, 2)) == [1, 3]
    assert kept(top_k_filter(logits, 3)) == [1, 3, 4]
    assert kept(top_k_filter(logits, 5)) == [0, 1, 2, 3, 4]
    assert kept(top_k_filter(logits, 50)) == [0, 1, 2, 3, 4]  # k past the vocabulary keeps everything
    out = top_k_filter(logits, 2)
    assert out[1] == 4.0 and out[3] == 3.0  # survivors are unchanged, not renormalised
    assert out[0] == -INF and out[2] == -INF and out[4] == -INF


def test_top_k_keeps_every_tie_at_the_kth_value():
    logits = torch.tensor([5.0, 2.0, 2.0, 2.0, 1.0])
    assert kept(top_k_filter(logits, 2)) == [0, 1, 2, 3]  # the 2nd largest value is shared three ways
    assert kept(top_k_filter(logits, 4)) == [0, 1, 2, 3]
    assert kept(top_k_filter(logits, 5)) == [0, 1, 2, 3, 4]


def test_top_k_works_row_by_row_on_a_window():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], [[0.0, 9.0, 8.0], [7.0, 7.0, 0.0]]])  # (B=2, W=2, V=3)
    mask = torch.isfinite(top_k_filter(logits, 2))
    assert mask.tolist() == [[[False, True, True], [True, True, False]], [[False, True, True], [True, True, False]]]


# --- top-p -------------------------------------------------------------------------------------

# probabilities 0.5, 0.25, 0.125, 0.125 in a shuffled order; cumulative mass before each token,
# most likely first: 0, 0.5, 0.75, 0.875 (all exact in binary floating point).
NUCLEUS_PROBS = [0.125, 0.5, 0.125, 0.25]


def test_nucleus_probabilities_are_exact_in_float64():
    """Precondition of the boundary test below: the masses it compares with p are exact."""
    probs = logits_of(NUCLEUS_PROBS).softmax(-1).sort(descending=True).values
    assert (probs.cumsum(-1) - probs).tolist() == [0.0, 0.5, 0.75, 0.875]


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.3, [1]),  # 0.5 alone reaches 0.3
        (0.5, [1]),  # boundary exactly at p: the most likely token alone has mass 0.5
        (0.5 + 1e-9, [1, 3]),
        (0.7, [1, 3]),
        (0.75, [1, 3]),  # boundary exactly at p: 0.5 + 0.25
        (0.75 + 1e-9, [0, 1, 2, 3]),  # the two 0.125 tokens tie; both sit past 0.75
        (1.0, [0, 1, 2, 3]),
    ],
)
def test_top_p_keeps_the_smallest_set_that_reaches_p(p, expected):
    logits = logits_of(NUCLEUS_PROBS)
    out = top_p_filter(logits, p)
    if p == 0.75 + 1e-9:
        # ties at the last place: the third token counted reaches 0.875 >= p, so the fourth
        # (mass before it 0.875) is dropped; which of the two tied tokens is kept is not fixed
        assert len(kept(out)) == 3 and set(kept(out)) >= {1, 3}
        return
    assert kept(out) == expected
    for i in expected:
        assert out[i] == logits[i]  # survivors unchanged


def test_top_p_with_a_zero_probability_token_and_per_row_nuclei():
    logits = torch.stack([logits_of([0.0, 0.6, 0.4]), logits_of([0.7, 0.2, 0.1])])  # (2, 3)
    out = top_p_filter(logits, 0.6)
    assert torch.isfinite(out).tolist() == [[False, True, False], [True, False, False]]
    out = top_p_filter(logits, 0.8)
    assert torch.isfinite(out).tolist() == [[False, True, True], [True, True, False]]


# --- process_logits: temperature once, then top-k, then top-p, after the processors ------------


def greedy_free(temperature: float, **filters) -> SamplingConfig:
    return SamplingConfig(temperature=temperature, **filters)


def test_temperature_divides_the_logits_exactly_once():
    logits = torch.tensor([[[2.0, 0.0, -2.0, 4.0]]], dtype=torch.float64)  # (1, 1, 4)
    positions = torch.zeros(1, 1, dtype=torch.long)
    out = process_logits(logits, positions, greedy_free(2.0))
    assert out.tolist() == [[[1.0, 0.0, -1.0, 2.0]]]
    out = process_logits(logits, positions, greedy_free(0.5))
    assert out.tolist() == [[[4.0, 0.0, -4.0, 8.0]]]
    # greedy (temperature 0) leaves the logits alone
    assert process_logits(logits, positions, SamplingConfig()).tolist() == logits.tolist()


def test_processors_run_before_temperature():
    class AddOneToToken0:
        def __call__(self, logits, new_positions):
            return logits + torch.tensor([1.0, 0.0, 0.0], dtype=logits.dtype)

    logits = torch.tensor([[[2.0, 1.0, 0.0]]], dtype=torch.float64)
    out = process_logits(logits, torch.zeros(1, 1, dtype=torch.long), greedy_free(0.5), [AddOneToToken0()])
    assert out.tolist() == [[[6.0, 2.0, 0.0]]]  # (2 + 1) / 0.5, not 2 / 0.5 + 1


def test_processors_see_each_positions_index():
    seen = []

    class Record:
        def __call__(self, logits, new_positions):
            seen.append(new_positions.tolist())
            return logits

    process_logits(torch.zeros(2, 3, 4), torch.tensor([[0, 1, 2], [5, 6, 7]]), SamplingConfig(temperature=1.0), [Record()])
    assert seen == [[[0, 1, 2], [5, 6, 7]]]


def test_top_p_sees_the_tempered_distribution():
    # at temperature 1: p = (0.5, 0.25, 0.125, 0.125); top-p 0.6 keeps two tokens.
    # at temperature 0.5 the logits double: p ∝ (0.25, 0.0625, 0.015625, 0.015625), i.e.
    # (16, 4, 1, 1) / 22, and 16/22 = 0.727 >= 0.6 alone.
    logits = logits_of([0.5, 0.25, 0.125, 0.125])[None, None]  # (1, 1, 4)
    positions = torch.zeros(1, 1, dtype=torch.long)
    assert kept(process_logits(logits, positions, greedy_free(1.0, top_p=0.6))[0, 0]) == [0, 1]
    assert kept(process_logits(logits, positions, greedy_free(0.5, top_p=0.6))[0, 0]) == [0]
    # at temperature 2 the logits halve: p ∝ sqrt(0.5, 0.25, 0.125, 0.125) = (0.7071, 0.5, 0.3536, 0.3536),
    # normalised (0.3694, 0.2612, 0.1847, 0.1847): the first two have 0.6306 >= 0.6
    assert kept(process_logits(logits, positions, greedy_free(2.0, top_p=0.6))[0, 0]) == [0, 1]
    # top-p 0.65: the third token is needed (0.6306 < 0.65) and reaches 0.815; its tie partner is not
    three = kept(process_logits(logits, positions, greedy_free(2.0, top_p=0.65))[0, 0])
    assert len(three) == 3 and three[:2] == [0, 1]


def test_top_k_runs_before_top_p_and_top_p_renormalises_the_survivors():
    # p = (0.5, 0.3, 0.2). top-k 2 leaves (0.5, 0.3) -> renormalised (0.625, 0.375); top-p 0.6
    # then keeps token 0 alone. Top-p first would keep (0.5, 0.3) (mass before 0.3 is 0.5 < 0.6).
    logits = logits_of([0.5, 0.3, 0.2])[None, None]
    out = process_logits(logits, torch.zeros(1, 1, dtype=torch.long), greedy_free(1.0, top_k=2, top_p=0.6))
    assert kept(out[0, 0]) == [0]
    probs = target_probs(process_logits(logits, torch.zeros(1, 1, dtype=torch.long), greedy_free(1.0, top_k=2)))
    torch.testing.assert_close(probs[0, 0], torch.tensor([0.625, 0.375, 0.0], dtype=torch.float64), rtol=0, atol=1e-15)


def test_top_k_and_temperature_together_give_the_hand_computed_law():
    # logits (3, 1, 2, 0) / 0.5 = (6, 2, 4, 0); top-k 2 keeps tokens 0 and 2: p = (e^6, e^4) / (e^6 + e^4)
    logits = torch.tensor([[[3.0, 1.0, 2.0, 0.0]]], dtype=torch.float64)
    probs = target_probs(process_logits(logits, torch.zeros(1, 1, dtype=torch.long), greedy_free(0.5, top_k=2)))[0, 0]
    a = 1.0 / (1.0 + math.exp(-2.0))
    torch.testing.assert_close(probs, torch.tensor([a, 0.0, 1.0 - a, 0.0], dtype=torch.float64), rtol=0, atol=1e-15)


def test_top_p_one_and_large_k_change_nothing():
    logits = torch.tensor([[[0.3, -1.2, 2.2]]], dtype=torch.float64)
    out = process_logits(logits, torch.zeros(1, 1, dtype=torch.long), greedy_free(1.0, top_k=3, top_p=1.0))
    assert out.tolist() == logits.tolist()


def test_everything_masked_or_nan_is_refused():
    positions = torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="every token was masked"):
        process_logits(torch.full((1, 1, 3), -INF), positions, greedy_free(1.0))
    with pytest.raises(ValueError, match="NaN"):
        process_logits(torch.tensor([[[0.0, float("nan")]]]), positions, greedy_free(1.0))


# --- target_probs and sample ------------------------------------------------------------------


def test_target_probs_is_the_softmax_in_float32_or_better():
    logits = torch.tensor([[[0.0, math.log(3.0), -INF]]], dtype=torch.float64)
    torch.testing.assert_close(target_probs(logits), torch.tensor([[[0.25, 0.75, 0.0]]], dtype=torch.float64), rtol=0, atol=1e-15)
    half = torch.tensor([[[0.0, 0.0, 0.0, 0.0]]], dtype=torch.bfloat16)
    probs = target_probs(half)
    assert probs.dtype == torch.float32 and probs.tolist() == [[[0.25, 0.25, 0.25, 0.25]]]


def test_sample_follows_each_rows_distribution():
    n = 30000
    laws = torch.tensor([[0.1, 0.2, 0.7, 0.0], [0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    draws = sample(laws[:, None].expand(3, n, 4), torch.Generator().manual_seed(0))  # (3, n)
    assert draws.shape == (3, n)
    assert int((draws[0] == 3).sum()) == 0, "a token of probability 0 was drawn"
    assert bool((draws[1] == 3).all())
    for row in (0, 2):
        counts = torch.bincount(draws[row], minlength=4).double()
        law = laws[row]
        support = law > 0
        assert chisquare(counts[support].numpy(), (law[support] * n).numpy()).pvalue > 1e-3


def test_sample_is_seed_deterministic_and_seed_sensitive():
    probs = torch.full((64, 10), 0.1)
    a = sample(probs, torch.Generator().manual_seed(1))
    b = sample(probs, torch.Generator().manual_seed(1))
    c = sample(probs, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
