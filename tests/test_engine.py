"""The engine is model-free: a linear recurrence solved by Jacobi and Gauss-Seidel-Jacobi sweeps."""

from __future__ import annotations

import math

import pytest
import torch

from jacobix.core.acceptance import relative_residual, segment_accept, tolerance_accept
from jacobix.core.engine import Acceptance, Drafts, FixedPointState, solve
from jacobix.core.cache import KVCache


class Recurrence:
    """x_t = tanh(w * x_{t-1}) + c_t with x_0 = c_0: a nonlinear lower-triangular system."""

    def __init__(self, c: torch.Tensor, w: float, *, rule: str, tol: float = 0.0, max_sweeps: int = 100) -> None:
        self.c, self.w, self.rule, self.tol, self.max_sweeps = c, w, rule, tol, max_sweeps  # c: (B, T, F)
        self.calls = 0

    def sweep(self, state: FixedPointState, drafts: Drafts) -> Acceptance:
        self.calls += 1
        d = drafts.values.shape[1]
        inputs = torch.cat([state.last_values()[:, None], drafts.values], dim=1)  # (B, D+1, F)
        positions = state.window_positions(d + 1).clamp(max=self.c.shape[1] - 1)
        c = self.c.gather(1, positions[..., None].expand(-1, -1, self.c.shape[2]))
        outputs = torch.tanh(self.w * inputs) + c  # (B, D+1, F)
        if self.rule == "prefix":
            accepted = tolerance_accept(drafts.values, outputs, rtol=0.0, atol=self.tol)
            n_commit = accepted + 1
        else:
            accepted = torch.zeros_like(state.length)
            residual = relative_residual(drafts.values, outputs)
            n_commit = segment_accept(residual, state.sweeps_on_window + 1, tolerance=self.tol,
                                      max_sweeps=self.max_sweeps, width=d + 1)
        return Acceptance(n_commit=n_commit, values=outputs, proposals=Drafts(outputs), n_accepted=accepted)

    def draft(self, state, carried, fresh):
        zeros = torch.zeros(fresh.shape[0], fresh.shape[1], self.c.shape[2], dtype=self.c.dtype)
        return Drafts(zeros if carried is None else torch.where(fresh[..., None], zeros, carried.values))

    def rollback(self, state):
        pass


def sequential(c: torch.Tensor, w: float) -> torch.Tensor:
    x = [c[:, 0]]
    for t in range(1, c.shape[1]):
        x.append(torch.tanh(w * x[-1]) + c[:, t])
    return torch.stack(x, dim=1)


def run(problem, c, window, record=False):
    b, t = c.shape[:2]
    state = FixedPointState.start(c[:, :1], torch.ones(b, dtype=torch.long), torch.full((b,), t), window)
    stats = solve(problem, state, window=window, record=record)
    return state.values[:, :t], stats


@pytest.mark.parametrize("window", [1, 2, 5, 16, 64])
def test_prefix_rule_with_zero_tolerance_is_exactly_sequential(window):
    c = torch.randn(3, 40, 2, generator=torch.Generator().manual_seed(window), dtype=torch.float64)
    values, stats = run(Recurrence(c, 0.7, rule="prefix"), c, window)
    assert torch.equal(values, sequential(c, 0.7))
    assert stats.forward_passes <= 39


def test_contraction_converges_in_far_fewer_sweeps_than_positions():
    c = torch.randn(2, 200, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    values, stats = run(Recurrence(c, 0.3, rule="prefix", tol=1e-8), c, 32)
    assert torch.allclose(values, sequential(c, 0.3), atol=1e-7)
    assert stats.forward_passes < 199 / 2


def test_segment_rule_commits_whole_segments():
    c = torch.randn(2, 49, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    problem = Recurrence(c, 0.5, rule="segment", tol=1e-20, max_sweeps=100)
    values, stats = run(problem, c, 16, record=True)
    assert torch.allclose(values, sequential(c, 0.5), atol=1e-9)
    commits = torch.cat([r.n_commit for r in stats.trajectory]).unique().tolist()
    assert set(commits) <= {0, 16}  # 48 unknowns after x_0: three segments of 16
    assert int(stats.committed.sum()) == 2 * 48


def test_segment_rule_sweep_cap_bounds_the_passes():
    c = torch.randn(1, 33, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    values, stats = run(Recurrence(c, 0.9, rule="segment", tol=0.0, max_sweeps=3), c, 8)
    assert stats.forward_passes == 3 * math.ceil(32 / 8)


def test_trajectory_records_every_sweep():
    c = torch.randn(1, 20, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, stats = run(Recurrence(c, 0.5, rule="prefix"), c, 4, record=True)
    assert len(stats.trajectory) == stats.forward_passes
    starts = [int(r.start) for r in stats.trajectory]
    assert starts[0] == 1 and starts == sorted(starts)
    assert sum(int(r.n_commit) for r in stats.trajectory) == 19


def test_kv_cache_writes_by_position_and_masks_the_future():
    cache = KVCache(num_layers=1, batch_size=2, num_kv_heads=1, capacity=6, head_dim=2)
    k = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    positions = torch.tensor([[0, 1, 2], [3, 4, 5]])
    keys, _ = cache.write(0, positions, k, k)
    assert torch.equal(keys[0, 0, :3], k[0, 0]) and torch.equal(keys[1, 0, 3:], k[1, 0])
    mask = cache.attention_mask(positions)
    assert mask.shape == (2, 1, 3, 6)
    assert mask[0, 0, 0].tolist() == [True, False, False, False, False, False]
    assert mask[1, 0, 2].tolist() == [True] * 6
    cache.rollback(torch.tensor([1, 4]))
    assert cache.lengths.tolist() == [1, 4]


def test_cache_after_jacobi_equals_a_fresh_prefill_of_the_committed_tokens():
    """Rejected drafts leave no trace: every committed slot holds the keys a clean prefill writes."""
    from conftest import tiny_model

    model = tiny_model(2)
    prompts = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    lengths = torch.tensor([4, 2])
    state = FixedPointState.start(prompts, lengths, lengths + 25, 6)
    cache = model.new_cache(2, state.values.shape[1])
    problem = _sjd_problem(model, cache, lengths, state.values.shape[1] - 1, seed=0)
    with torch.no_grad():
        model.forward(prompts[:, :3], torch.arange(3).expand(2, 3), cache)
        problem.rollback(state)
        stats = solve(problem, state, window=6)
    assert int(stats.accepted.sum()) < int(stats.committed.sum())  # some drafts were rejected
    fresh = model.new_cache(2, state.values.shape[1])
    width = int(state.length.max())
    with torch.no_grad():
        model.forward(state.values[:, :width], torch.arange(width).expand(2, width), fresh)
    for row in range(2):
        valid = int(state.length[row]) - 1  # the last committed token is fed by the next sweep
        assert torch.allclose(cache.keys[:, row, :, :valid], fresh.keys[:, row, :, :valid], atol=1e-12)
        assert torch.allclose(cache.values[:, row, :, :valid], fresh.values[:, row, :, :valid], atol=1e-12)


def test_decoding_on_from_the_jacobi_cache_equals_decoding_from_a_clean_prefill():
    """Rollback observed by outputs: after SJD with rejections, greedy steps fed through the
    engine's cache give the same logits as the same steps after a clean prefill of the prefix."""
    from conftest import tiny_model

    model = tiny_model(5)
    prompts = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
    lengths = torch.tensor([3, 5])
    state = FixedPointState.start(prompts, lengths, lengths + 17, 7)
    capacity = state.values.shape[1] + 16
    cache = model.new_cache(2, capacity)
    problem = _sjd_problem(model, cache, lengths, capacity - 1, seed=1)
    with torch.no_grad():
        model.forward(prompts[:, :4], torch.arange(4).expand(2, 4), cache)  # row 0's padding slots are stale
        problem.rollback(state)
        stats = solve(problem, state, window=7)
    assert int(stats.accepted.sum()) < int(stats.committed.sum())  # some drafts were rejected
    for row in range(2):
        n = int(state.length[row])
        committed = state.values[row : row + 1, :n]  # (1, n)
        clean = model.new_cache(1, capacity)
        reused = _row_cache(cache, row)
        with torch.no_grad():
            model.forward(committed[:, : n - 1], torch.arange(n - 1)[None], clean)
            last = committed[:, n - 1 :]  # (1, 1)
            for step in range(6):  # greedy steps, fed one token at a time through each cache
                position = torch.tensor([[n - 1 + step]])
                from_clean = model.forward(last, position, clean)  # (1, 1, V)
                from_reused = model.forward(last, position, reused)
                torch.testing.assert_close(from_reused, from_clean, rtol=0, atol=1e-12)
                last = from_clean[:, -1].argmax(-1, keepdim=True)


def _row_cache(cache: KVCache, row: int) -> KVCache:
    """A one-row copy of ``cache`` with every slot, stale ones included."""
    single = KVCache(num_layers=cache.keys.shape[0], batch_size=1, num_kv_heads=cache.keys.shape[2],
                     capacity=cache.capacity, head_dim=cache.keys.shape[4], dtype=cache.keys.dtype)
    single.keys.copy_(cache.keys[:, row : row + 1])
    single.values.copy_(cache.values[:, row : row + 1])
    return single


def _sjd_problem(model, cache, lengths: torch.Tensor, max_position: int, seed: int):
    """SJD at temperature 1 with random drafts: a token problem whose passes reject drafts."""
    from jacobix.core.sampling import SamplingConfig
    from jacobix.tokens.problem import TokenProblem
    from jacobix.tokens.proposers.basic import JacobiProposer, RandomInit
    from jacobix.tokens.verify import Verifier

    generator = torch.Generator().manual_seed(seed)
    verifier = Verifier(model, cache, candidates=1, prompt_length=lengths, sampling=SamplingConfig(temperature=1.0),
                        processors=(), guidance=None, eos_token_ids=(), generator=generator, prob_dtype=torch.float64,
                        max_position=max_position)
    return TokenProblem(verifier, JacobiProposer(RandomInit()), policy=None, costs=None, generator=generator,
                        vocab_size=model.vocab_size, drafts=6)

