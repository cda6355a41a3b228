"""The n-gram pool and the window controller on hand-built inputs: what the pool proposes and
in which order, and how many drafts the controller feeds for given costs and acceptance rates."""

from __future__ import annotations

from collections import deque

import pytest
import torch

from jacobix.tokens.width import AdaptiveConfig, AdaptiveWidth, PassCosts
from jacobix.tokens.proposers.base import DraftSource
from jacobix.tokens.proposers.ngram import LookaheadConfig, NGramPool, RowPools

CONFIG = LookaheadConfig(key_lengths=(2, 1))


def test_pool_prefers_the_longest_key_and_the_newest_continuation():
    pool = NGramPool(CONFIG, length=3)
    pool.add([7, 1, 2, 3, 9, 1, 2, 4, 5])
    index, found = pool.candidates([8, 1, 2])  # key (1, 2) was followed by 3 9 1, then by 4 5
    assert index == 0 and found == [(4, 5), (3, 9, 1)]
    index, found = pool.candidates([8, 9])  # no (8, 9) key: falls back to key (9,)
    assert index == 1 and found == [(1, 2, 4)]
    assert pool.candidates([6]) == (-1, [])


def test_pool_keeps_the_longer_of_two_continuations_that_extend_one_another():
    pool = NGramPool(CONFIG, length=4)
    pool.add([1, 2, 3])
    pool.add([1, 2, 3, 4, 5])
    assert pool.candidates([1, 2])[1] == [(3, 4, 5)]


def _rows(text: list[int]) -> RowPools:
    pools = RowPools(CONFIG, length=3)
    pools.catch_up(torch.tensor([text]), torch.tensor([len(text)]))
    return pools


def test_row_pool_asks_the_committed_text_before_the_trajectory():
    pools = _rows([5, 6, 7, 1, 5, 6])
    pools.add(0, [5, 6, 9, 9])  # a sweep's guesses: newer, but not committed
    assert pools.candidates(0) == (0, [(7, 1, 5)])


def test_row_pool_falls_back_to_the_trajectory_with_its_own_key_index():
    pools = _rows([5, 6, 7, 1, 2, 8])
    pools.add(0, [3, 2, 8, 4, 4])
    index, found = pools.candidates(0)  # text has no (2, 8) continuation; the trajectory has
    assert index == len(CONFIG.key_lengths) + 0 and found == [(4, 4)]


def test_row_pool_harvests_only_new_committed_tokens():
    pools = RowPools(CONFIG, length=2)
    values = torch.tensor([[4, 5, 6, 4, 5, 0, 0]])
    pools.catch_up(values, torch.tensor([3]))
    assert pools.candidates(0) == (-1, [])  # (5, 6) was never followed by anything yet
    pools.catch_up(values, torch.tensor([5]))
    assert pools.history[0] == [4, 5, 6, 4, 5]
    assert pools.candidates(0) == (0, [(6, 4)])


@pytest.mark.parametrize("bad", [dict(text_prior=()), dict(text_prior=(0.5, 1.0)), dict(trajectory_prior=-0.1)])
def test_lookahead_config_refuses_bad_priors(bad):
    with pytest.raises(ValueError, match="LookaheadConfig"):
        LookaheadConfig(**bad)


def test_pass_costs_separate_the_machine_level_from_the_width_shape():
    costs = PassCosts(keep=15)
    for seconds in (1.0, 1.1, 0.9, 50.0, 1.0):  # one-token passes, one hit by load
        costs.add(1, seconds)
    assert costs.level() == pytest.approx(1.0)
    for seconds in (2.0, 0.1, 2.2, 2.1, 2.0, 2.1):  # 4-token passes between one-token ones; one implausibly fast
        costs.add(4, seconds)
        costs.add(1, 1.0)
    assert costs.shape(4) == pytest.approx(2.05)
    assert costs.shape(2) == pytest.approx(1.0 + 1.05 / 3)  # linear between measured widths
    assert costs.shape(8) == pytest.approx(2.05 * 2)  # in proportion past the largest
    for _ in range(20):  # the machine slows down 2x while only 4-token passes run
        costs.add(4, 4.1)
    assert 2.05 <= costs.shape(4) <= 2.2  # the drift goes into the level, not the shape
    assert costs.level() == pytest.approx(4.1 / costs.shape(4)) and costs.estimate(4) == pytest.approx(4.1)


def test_pass_costs_probe_times_each_width_against_the_one_token_pass_of_its_round(monkeypatch):
    import jacobix.tokens.width.costs as costs_module

    now = [0.0]
    speed = iter([1.0, 1.0] + [1.0, 3.0] + [2.0, 6.0] + [1.0, 3.0])  # warm-up, then rounds at drifting speeds
    monkeypatch.setattr(costs_module, "clock", lambda device=None: now[0])

    def run_pass(width):
        now[0] += next(speed)

    costs = PassCosts(probe_rounds=3)
    costs.probe(run_pass, (2,))
    assert costs.shape(2) == pytest.approx(3.0)  # every round says 3x, whatever the machine's speed
    assert not costs.needs_probe((1, 2)) and costs.needs_probe((1, 2, 4))


def test_auto_window_takes_any_number_of_key_lengths_and_stays_exact():
    import jacobix
    from conftest import tiny_model

    model = tiny_model(3)
    prompt = [[1, 2, 3, 1, 2, 3, 1, 2]]
    plain = jacobix.generate(model, prompt, method="ar", max_new_tokens=20)
    pooled = jacobix.generate(model, prompt, method="jacobi", window="auto", max_new_tokens=20,
                              lookahead=LookaheadConfig(key_lengths=(5, 4, 3, 2, 1)))
    assert torch.equal(pooled.tokens[0], plain.tokens[0])
