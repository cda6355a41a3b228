"""Every lossy rule at exactly its threshold, and every lossless variant's output law in the fast suite.

Planted bugs that flip an inequality at a threshold, or let a lossless decoder verify a draft
whose context is still noisy, survive tests that never sit on the boundary or that only run
under the slow mark; these tests sit on it (``tools/mutate.py`` lists the bugs they catch).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import jacobix
from jacobix.core.acceptance import BinTolerance, segment_accept, tolerance_accept
from jacobix.core.engine import _forced
from jacobix.core.sampling import SamplingConfig
from jacobix.images.sjd2 import SJD2Config, SJD2Proposer
from jacobix.train.ceed import mixed_labels

from conftest import exact_joint, tiny_model
from test_sjd_distribution import chi_square_pvalue


def test_ceed_takes_the_teachers_chunk_at_exactly_delta_max():
    teacher, truth = torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.tensor([[7, 8], [7, 8], [7, 8]])
    truth_actions = torch.zeros(3, 2, dtype=torch.float64)
    teacher_actions = torch.tensor([[0.25, -0.25], [0.25 + 2 ** -40, 0.0], [float("nan"), 0.0]], dtype=torch.float64)
    labels, near = mixed_labels(teacher, truth, teacher_actions, truth_actions, delta_max=0.25)
    assert near.tolist() == [True, False, False]  # at delta_max: the teacher; just past it or missing: the truth
    assert labels.tolist() == [[1, 2], [7, 8], [7, 8]]
    assert mixed_labels(teacher, truth, truth_actions, truth_actions, delta_max=0.0)[1].all()  # 0: equal actions only


def test_bin_tolerance_at_exactly_max_moved_and_at_the_bin_range_edges():
    rule = BinTolerance(first=10, count=5, max_moved=2)  # bins are tokens 10..14
    old = torch.tensor([[10, 10, 12, 14, 14, 9, 15, 3]])
    new = torch.tensor([[12, 13, 14, 12, 11, 10, 14, 3]])
    assert rule(old, new).tolist() == [[True, False, True, True, False, False, False, True]]
    assert BinTolerance(first=10, count=5, max_moved=0)(old, new).tolist() == [[False] * 7 + [True]]


def _window(drafts: list[int], outputs: list[int], budget: int, sweeps: int = 0):
    state = SimpleNamespace(sweeps_on_window=torch.tensor([sweeps]))
    return state, SimpleNamespace(values=torch.tensor([drafts])), SimpleNamespace(values=torch.tensor([outputs])), \
        torch.tensor([budget])


@pytest.mark.parametrize("budget", [2, 3, 4])
def test_the_settle_test_reads_every_draft_the_commit_rests_on_and_no_more(budget):
    equal = lambda old, new: old == new  # noqa: E731 - the exact test as a rule
    outputs = [5, 6, 7, 8, 9]  # D + 1 = 5 outputs, 4 drafts
    for moved in range(4):  # one draft unsettled; committing b values rests on drafts 0 .. b - 2
        drafts = [o if i != moved else 0 for i, o in enumerate(outputs[:4])]
        forced = _forced(*_window(drafts, outputs, budget), None, equal)
        assert bool(forced[0]) == (moved >= budget - 1), (budget, moved)


def test_the_sweep_cap_forces_on_exactly_the_capth_sweep():
    outputs, drafts = [5, 6, 7], [0, 0]
    for sweeps, forced in ((0, False), (1, True), (2, True)):  # sweeps already made on the window; cap 2
        assert bool(_forced(*_window(drafts, outputs, 3, sweeps), 2, None)[0]) == forced


def test_segment_and_tolerance_rules_at_exactly_their_thresholds():
    residual = torch.tensor([0.5, 0.5 + 2 ** -30, 9.0, 9.0], dtype=torch.float64)
    sweeps = torch.tensor([1, 1, 3, 2])
    done = segment_accept(residual, sweeps, tolerance=0.5, max_sweeps=3, width=4)
    assert done.tolist() == [4, 0, 4, 0]
    guesses = torch.tensor([[[1.0], [2.0]]], dtype=torch.float64)
    outputs = torch.tensor([[[1.5], [2.0], [0.0]]], dtype=torch.float64)
    assert tolerance_accept(guesses, outputs, rtol=0.0, atol=0.5).tolist() == [2]
    assert tolerance_accept(guesses, outputs, rtol=0.0, atol=0.5 - 2 ** -30).tolist() == [0]
    assert tolerance_accept(guesses, outputs, rtol=1 / 3, atol=0.0).tolist() == [2]  # |1 - 1.5| <= 1.5 / 3


VOCAB, LENGTH, SAMPLES, PROMPT = 5, 3, 6000, [1, 3, 0]


@pytest.fixture(scope="module")
def toy():
    return tiny_model(11, vocab=VOCAB, dim=16)


def _noise(dim: int, seed: int, scale: float):
    from jacobix.images.denoise import NoiseEmbedding, NoiseEmbeddingConfig

    torch.manual_seed(seed)
    noise = NoiseEmbedding(NoiseEmbeddingConfig(dim=dim)).double()
    with torch.no_grad():
        noise.mean.normal_()
        noise.std.uniform_(0.5, 2.0)
        noise.time[2].weight.normal_(std=scale)
    return noise


@pytest.mark.parametrize("levels,window,coupled", [(2, 4, False), (3, 5, True)])
def test_lossless_sjd2_keeps_the_exact_law_in_the_fast_suite(toy, levels, window, coupled):
    """Noisy slots that change predictions a lot (scale 3): verifying any draft whose context is still
    noisy moves the law of the first three tokens far past this test's threshold."""
    proposer = SJD2Proposer(_noise(toy.config.dim, levels, 3.0), toy.embed, SJD2Config(levels=levels, coupled=coupled))
    result = jacobix.generate(toy, [PROMPT] * SAMPLES, method="sjd2", proposer=proposer, window=window,
                              generator=torch.Generator().manual_seed(levels), max_new_tokens=LENGTH, temperature=1.0)
    joint = exact_joint(toy, PROMPT, LENGTH, SamplingConfig(temperature=1.0))
    assert result.stats.schedule.drafts_by_source.get("sjd2-lossless", 0) > 0
    assert chi_square_pvalue([tuple(t.tolist()) for t in result.tokens], joint) > 1e-3
