"""Property-based tests (Hypothesis) of the engine's invariants on random tiny models, prompts,
windows, batch shapes and paddings: every sweep commits a token, greedy Jacobi is greedy AR,
speculative acceptance keeps the target law (exact enumeration), and rollback restores the cache."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jacobix
from jacobix.core import acceptance

from conftest import naive_greedy, tiny_model

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODELS = {}


def model_of(seed: int, vocab: int):
    """Tiny float64 models, built once per (seed, vocab)."""
    if (seed, vocab) not in MODELS:
        MODELS[seed, vocab] = tiny_model(seed, vocab=vocab, dim=16, layers=1)
    return MODELS[seed, vocab]


@st.composite
def batches(draw):
    seed, vocab = draw(st.integers(0, 3)), draw(st.sampled_from([5, 11]))
    lengths = draw(st.lists(st.integers(1, 7), min_size=1, max_size=3))  # ragged rows: the library pads them
    prompts = [draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n)) for n in lengths]
    return model_of(seed, vocab), prompts, draw(st.integers(1, 9)), draw(st.integers(1, 12))


@FAST
@given(batch=batches(), init=st.sampled_from(["random", "repeat", "context"]), block=st.booleans())
def test_greedy_jacobi_equals_greedy_ar(batch, init, block):
    model, prompts, window, new = batch
    ar = jacobix.generate(model, prompts, method="ar", max_new_tokens=new)
    jac = jacobix.generate(model, prompts, method="jacobi", max_new_tokens=new, window=window, init=init, block=block,
                           generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(ar.tokens, jac.tokens))
    for prompt, tokens in zip(prompts, ar.tokens):  # and both are the cache-free reference
        assert torch.equal(tokens, naive_greedy(model, torch.tensor(prompt), new))


@FAST
@given(batch=batches(), method=st.sampled_from(["jacobi", "sjd", "sjd-coupled"]))
def test_every_sweep_commits_at_least_one_token_in_every_running_row(batch, method):
    model, prompts, window, new = batch
    sampled = method != "jacobi"
    result = jacobix.generate(model, prompts, method=method, max_new_tokens=new, window=window,
                              generator=torch.Generator().manual_seed(1), **({"temperature": 1.0} if sampled else {}))
    stats = result.stats
    running = stats.active_per_pass.bool()  # (P, B)
    assert bool((stats.committed_per_pass[running] >= 1).all())
    assert stats.forward_passes <= new  # never more passes than sequential decoding
    assert [len(t) for t in result.tokens] == [new] * len(prompts)


GRID = 4096  # uniform numbers at the midpoints of GRID equal cells: acceptance frequencies within 1 / GRID


@st.composite
def distributions(draw):
    vocab = draw(st.integers(2, 4))
    weights = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=vocab, max_size=vocab)
    p, q = (torch.tensor(draw(weights), dtype=torch.float64) for _ in range(2))
    q[draw(st.integers(0, vocab - 1))] += 0.05  # q must be a distribution; p may give zero mass anywhere
    p[draw(st.integers(0, vocab - 1))] += 0.05
    return p / p.sum(), q / q.sum()


@settings(max_examples=40, deadline=None)
@given(pq=distributions())
def test_speculative_acceptance_gives_the_target_law_exactly(pq):
    """Enumerate every draft (weighted by q) and a grid of uniforms; record each rejection's residual."""
    p_target, p_draft = pq
    vocab = len(p_target)
    drafts = torch.arange(vocab).repeat_interleave(GRID)[:, None]  # (V * GRID, 1) every draft, GRID times
    residuals = []

    def grid(shape, like, generator):
        return ((torch.arange(GRID, dtype=like.dtype) + 0.5) / GRID).repeat(vocab)[:, None]  # (V * GRID, 1)

    def capture(probs, generator):
        residuals.append(probs / probs.sum(-1, keepdim=True))
        return torch.zeros(probs.shape[:-1], dtype=torch.long)

    rows = len(drafts)
    with pytest.MonkeyPatch.context() as patch:  # undone before any other test runs
        patch.setattr(acceptance, "uniform", grid)
        patch.setattr(acceptance, "sample", capture)
        accepted, _ = acceptance.speculative_accept(drafts, p_draft.expand(rows, 1, vocab),
                                                    p_target.expand(rows, 2, vocab), None)
    weight = p_draft[drafts[:, 0]] / GRID  # (rows,) probability of each enumerated case
    law = torch.zeros(vocab, dtype=torch.float64)
    law.index_add_(0, drafts[:, 0], weight * (accepted == 1))  # accepted: the draft is the token
    law += (weight * (accepted == 0)) @ residuals[0]  # rejected: the recovered token's law
    assert torch.allclose(law, p_target, atol=2 / GRID), (law, p_target)


@FAST
@given(seed=st.integers(0, 3), prefix=st.integers(1, 6), junk=st.integers(1, 6), extra=st.integers(1, 5),
       rows=st.integers(1, 3))
def test_rollback_restores_the_cache(seed, prefix, junk, extra, rows):
    """Junk drafts written past the prefix and rolled back leave no trace: the continuation's logits
    equal those of a fresh cache that never saw them."""
    model = model_of(seed, 11)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(11, (rows, prefix + extra), generator=g)
    garbage = torch.randint(11, (rows, junk), generator=g)

    def positions(start: int, count: int):
        return torch.arange(start, start + count).expand(rows, count)

    capacity = prefix + max(junk, extra) + 1
    fresh, used = model.new_cache(rows, capacity), model.new_cache(rows, capacity)
    with torch.no_grad():
        model(tokens[:, :prefix], positions(0, prefix), fresh)
        model(tokens[:, :prefix], positions(0, prefix), used)
        model(garbage, positions(prefix, junk), used)  # rejected drafts
        used.rollback(torch.full((rows,), prefix))
        expected = model(tokens[:, prefix:], positions(prefix, extra), fresh)
        again = model(tokens[:, prefix:], positions(prefix, extra), used)
    assert torch.equal(expected, again)
