"""Unit tests of the pure acceptance rules on hand-built distributions."""

from __future__ import annotations

import pytest
import torch

from jacobix.core.acceptance import (
    candidates_accept,
    greedy_accept,
    leading_true,
    relative_residual,
    segment_accept,
    speculative_accept,
    take_positions,
    tolerance_accept,
)

N = 20000


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_leading_true():
    mask = torch.tensor([[True, True, False, True], [False, True, True, True], [True, True, True, True]])
    assert leading_true(mask).tolist() == [2, 0, 4]
    assert leading_true(torch.zeros(3, 0, dtype=torch.bool)).tolist() == [0, 0, 0]


def test_greedy_accept_counts_matching_prefix():
    drafts = torch.tensor([[4, 5, 6], [4, 9, 6], [1, 5, 6]])
    targets = torch.tensor([[4, 5, 6, 7], [4, 5, 6, 7], [4, 5, 6, 7]])
    assert greedy_accept(drafts, targets).tolist() == [3, 1, 0]


def test_identical_draft_and_target_accept_everything():
    p = torch.softmax(torch.randn(N, 3, 7, generator=_gen(), dtype=torch.float64), -1)
    drafts = torch.multinomial(p.flatten(0, 1), 1, generator=_gen(1)).view(N, 3)
    p_target = torch.cat([p, p[:, :1]], dim=1)
    accepted, _ = speculative_accept(drafts, p, p_target, _gen(2))
    assert torch.all(accepted == 3)


def test_disjoint_supports_reject_and_resample_from_target():
    p_draft = torch.zeros(N, 1, 4, dtype=torch.float64)
    p_draft[..., :2] = 0.5
    p_target = torch.zeros(N, 2, 4, dtype=torch.float64)
    p_target[..., 2:] = torch.tensor([0.25, 0.75], dtype=torch.float64)
    drafts = torch.randint(2, (N, 1), generator=_gen())
    accepted, token = speculative_accept(drafts, p_draft, p_target, _gen(1))
    assert torch.all(accepted == 0)
    assert set(token.unique().tolist()) <= {2, 3}
    assert abs((token == 3).double().mean().item() - 0.75) < 0.02


def test_one_hot_draft_is_accepted_with_target_probability():
    p_target = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6]], dtype=torch.float64).expand(N, 2, 3)
    drafts = torch.ones(N, 1, dtype=torch.long)
    p_draft = torch.nn.functional.one_hot(drafts, 3).double()
    accepted, token = speculative_accept(drafts, p_draft, p_target, _gen())
    assert abs(accepted.double().mean().item() - 0.6) < 0.02
    # the committed first token is distributed as p_target[0]
    first = torch.where(accepted == 1, drafts[:, 0], token)
    freq = torch.bincount(first, minlength=3).double() / N
    assert torch.allclose(freq, p_target[0, 0], atol=0.02)


def test_draft_zero_where_target_positive_still_gives_target_law():
    # q puts no mass on token 2, p does: token 2 can only come from the residual
    p_draft = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64).expand(N, 1, 3)
    p_target = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64).expand(N, 2, 3)
    drafts = torch.multinomial(p_draft[:, 0], 1, replacement=True, generator=_gen())
    accepted, token = speculative_accept(drafts, p_draft, p_target, _gen(1))
    first = torch.where(accepted == 1, drafts[:, 0], token)
    freq = torch.bincount(first, minlength=3).double() / N
    assert torch.allclose(freq, p_target[0, 0], atol=0.02)


def test_bonus_token_comes_from_last_target():
    p = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(N, 1, 3)
    p_target = torch.cat([p, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(N, 1, 3)], dim=1)
    accepted, token = speculative_accept(torch.ones(N, 1, dtype=torch.long), p, p_target, _gen())
    assert torch.all(accepted == 1) and torch.all(token == 2)


def test_no_drafts_samples_from_target():
    p_target = torch.tensor([[0.3, 0.7]], dtype=torch.float64).expand(N, 1, 2)
    accepted, token = speculative_accept(torch.zeros(N, 0, dtype=torch.long), torch.zeros(N, 0, 2), p_target, _gen())
    assert torch.all(accepted == 0)
    assert abs(token.double().mean().item() - 0.7) < 0.02


def test_tolerance_accept_prefix():
    outputs = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    guesses = torch.tensor([[[1.0], [2.05], [3.0]]])
    assert tolerance_accept(guesses, outputs, rtol=0.0, atol=0.0).tolist() == [1]
    assert tolerance_accept(guesses, outputs, rtol=0.0, atol=0.1).tolist() == [3]
    assert tolerance_accept(guesses, outputs, rtol=0.03, atol=0.0).tolist() == [3]


def test_relative_residual_and_segment_rule():
    outputs = torch.ones(2, 4, 3)
    guesses = torch.ones(2, 3, 3)
    guesses[1] = 0.0
    residual = relative_residual(guesses, outputs)
    assert residual[0] == 0 and torch.isclose(residual[1], torch.tensor(1.0))
    commit = segment_accept(residual, torch.tensor([1, 1]), tolerance=1e-3, max_sweeps=4, width=4)
    assert commit.tolist() == [4, 0]
    commit = segment_accept(residual, torch.tensor([1, 4]), tolerance=1e-3, max_sweeps=4, width=4)
    assert commit.tolist() == [4, 4]


def test_relative_residual_with_a_mask_on_a_hand_built_case():
    guesses = torch.tensor([[[1.0], [5.0]]])  # (B=1, D=2, F=1)
    outputs = torch.tensor([[[2.0], [5.0], [9.0]]])  # the last output has no guess
    assert torch.isclose(relative_residual(guesses, outputs), torch.tensor(1 / 29))  # (1 + 0) / (4 + 25)
    assert torch.isclose(relative_residual(guesses, outputs, torch.tensor([[True, False]])), torch.tensor(1 / 4))
    assert relative_residual(guesses, outputs, torch.tensor([[False, False]])).tolist() == [0.0]
    assert relative_residual(guesses[:, :0], outputs[:, :1]).tolist() == [0.0]  # empty window


def test_take_positions_gathers_per_row():
    x = torch.arange(2 * 4 * 3).reshape(2, 4, 3)
    index = torch.tensor([[3, 0], [1, 1]])
    assert torch.equal(take_positions(x, index), torch.stack([x[0, [3, 0]], x[1, [1, 1]]]))
    assert torch.equal(take_positions(x[..., 0], index), torch.tensor([[9, 0], [15, 15]]))


def test_copy_init_row_above_on_a_hand_built_grid():
    from jacobix.tokens.proposers.basic import CopyInit, DraftContext

    # prompt of 1 token (class), then a 3-wide grid: rows [10 11 12] [13 14 15], window slots at 7..10
    canvas = torch.tensor([[99, 10, 11, 12, 13, 14, 15, 0, 0, 0, 0, 0]])
    positions = torch.tensor([[7, 8, 9, 10]])
    fresh = torch.tensor([[False, True, True, True]])
    canvas[0, 7] = 42  # a carried draft
    context = DraftContext(canvas, positions, fresh, torch.tensor([1]), 100, None)
    tokens, p_draft = CopyInit(3)(context)
    assert p_draft is None
    # slot 8 <- 5 (14), slot 9 <- 6 (15), slot 10 <- 7 (the carried 42)
    assert tokens[0, 1:].tolist() == [14, 15, 42]
    tokens, _ = CopyInit(1)(context)
    assert tokens[0, 1:].tolist() == [42, 42, 42]
    # first image row: the row above is the prompt, so repeat the last known token
    first_row = DraftContext(canvas, torch.tensor([[1, 2, 3]]), torch.tensor([[True, True, True]]), torch.tensor([1]), 100, None)
    assert CopyInit(3)(first_row)[0].tolist() == [[99, 99, 99]]
    # a chain: window of 8 fresh slots after position 6 copies row by row
    chain = DraftContext(canvas, torch.tensor([[7, 8, 9, 10, 11, 12, 13, 14]])[:, :5], torch.ones(1, 5, dtype=torch.bool), torch.tensor([1]), 100, None)
    assert CopyInit(3)(chain)[0].tolist() == [[13, 14, 15, 13, 14]]


def test_candidates_accept_samples_the_target_law_whatever_the_candidates():
    """Three fixed candidates (two share a first token) over a 3-token law: committed tokens,
    completed by ancestral sampling, must follow the exact joint; the candidate rule also accepts."""
    from test_sjd_distribution import chi_square_pvalue

    vocab, g = 4, _gen(5)
    p0 = torch.tensor([0.3, 0.05, 0.5, 0.15])  # most mass on the candidates' first tokens 2 and 0
    p1 = torch.softmax(torch.randn(vocab, vocab, generator=g), -1)  # p1[x0]
    p1[2] = torch.tensor([0.05, 0.4, 0.1, 0.45])  # after 2, the candidates propose 1 and 3
    p2 = torch.softmax(torch.randn(vocab, vocab, vocab, generator=g), -1)  # p2[x0, x1]
    candidates = torch.tensor([[2, 1], [2, 3], [0, 1]])  # (R, D)
    targets = torch.stack([torch.stack([p0, p1[a], p2[a, b]]) for a, b in candidates.tolist()])  # (R, D+1, V)
    n = 6000
    winner, accepted, next_token = candidates_accept(candidates.expand(n, -1, -1), targets.expand(n, -1, -1, -1), g)
    samples = []
    for w, k, t in zip(winner.tolist(), accepted.tolist(), next_token.tolist()):
        x = candidates[w, :k].tolist() + [t]
        while len(x) < 3:  # finish the sequence by plain ancestral sampling
            law = p0 if not x else (p1[x[0]] if len(x) == 1 else p2[x[0], x[1]])
            x.append(int(torch.multinomial(law, 1, generator=g)))
        samples.append(tuple(x[:3]))
    joint = {(a, b, c): float(p0[a] * p1[a, b] * p2[a, b, c]) for a in range(vocab) for b in range(vocab) for c in range(vocab)}
    assert chi_square_pvalue(samples, joint) > 1e-3
    assert float((accepted >= 1).float().mean()) == pytest.approx(float(p0[2] + p0[0]), abs=0.03)
    # the winner is the lowest-index candidate holding the accepted prefix (the second when (2, 3) is accepted)
    for w, k, x in zip(winner.tolist(), accepted.tolist(), samples):
        assert w == next(i for i, c in enumerate(candidates.tolist()) if c[:k] == list(x[:k]))
    assert int(((accepted == 2) & (winner == 1)).sum()) > 100  # and that case does happen (p = 0.5 * 0.45)


# --- against naive loop implementations written here --------------------------------------


def naive_prefix(passes: list[bool]) -> int:
    count = 0
    for ok in passes:
        if not ok:
            break
        count += 1
    return count


def test_greedy_and_tolerance_rules_equal_naive_loops():
    g = _gen(11)
    for _ in range(20):
        b, d = 6, int(torch.randint(0, 7, (1,), generator=g))
        targets = torch.randint(3, (b, d + 1), generator=g)
        drafts = torch.where(torch.rand(b, d, generator=g) < 0.8, targets[:, :d], torch.randint(3, (b, d), generator=g))
        expected = [naive_prefix([drafts[r, i] == targets[r, i] for i in range(d)]) for r in range(b)]
        assert greedy_accept(drafts, targets).tolist() == expected
        outputs = torch.randn(b, d + 1, 2, generator=g, dtype=torch.float64)
        guesses = outputs[:, :d] + 0.02 * torch.randn(b, d, 2, generator=g, dtype=torch.float64)
        for rtol, atol in ((0.0, 0.0), (0.0, 0.03), (0.05, 0.0), (0.01, 0.01)):
            expected = [
                naive_prefix([all(abs(float(guesses[r, i, f] - outputs[r, i, f])) <= atol + rtol * abs(float(outputs[r, i, f]))
                                  for f in range(2)) for i in range(d)])
                for r in range(b)
            ]
            assert tolerance_accept(guesses, outputs, rtol=rtol, atol=atol).tolist() == expected


def test_relative_residual_and_segment_rule_equal_naive_loops():
    g = _gen(12)
    guesses, outputs = torch.randn(4, 3, 2, generator=g, dtype=torch.float64), torch.randn(4, 4, 2, generator=g, dtype=torch.float64)
    for r in range(4):
        change = sum(float(outputs[r, i, f] - guesses[r, i, f]) ** 2 for i in range(3) for f in range(2))
        scale = sum(float(outputs[r, i, f]) ** 2 for i in range(3) for f in range(2))
        assert float(relative_residual(guesses, outputs)[r]) == pytest.approx(change / scale, rel=1e-12)
    residual, sweeps = torch.tensor([1e-4, 1e-2, 1e-3, 1.0]), torch.tensor([1, 1, 2, 3])
    assert segment_accept(residual, sweeps, tolerance=1e-3, max_sweeps=3, width=5).tolist() == [5, 0, 5, 5]


def naive_speculative_law(p_draft: torch.Tensor, p_target: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Exact law of (drafts..., accepted, next token) for drafts drawn from p_draft (D, V), by enumeration.

    Draft i passes with probability min(1, p_target[i, d] / p_draft[i, d]); the first failure
    draws from normalize(max(p_target[i] - p_draft[i], 0)); all passing draws from p_target[D].
    """
    import itertools

    d, v = p_draft.shape
    p, q = p_target.tolist(), p_draft.tolist()
    law: dict[tuple[int, ...], float] = {}
    for drafts in itertools.product(range(v), repeat=d):
        weight = 1.0
        for i, token in enumerate(drafts):
            weight *= q[i][token]
        if weight == 0:
            continue
        reach = weight  # probability of drawing these drafts and passing all before i
        for i, token in enumerate(drafts):
            ratio = min(1.0, p[i][token] / q[i][token])
            residual = [max(p[i][x] - q[i][x], 0.0) for x in range(v)]
            total = sum(residual)
            for x in range(v):
                cell = drafts + (i, x)
                law[cell] = law.get(cell, 0.0) + reach * (1 - ratio) * residual[x] / total
            reach *= ratio
        for x in range(v):
            law[drafts + (d, x)] = law.get(drafts + (d, x), 0.0) + reach * p[d][x]
    return law


def test_speculative_accept_outcomes_follow_the_naive_law():
    """Every (drafts, accepted, token) outcome against the enumerated law: a rule that ignores
    p_draft, skips the residual clamp, or samples the recovered token from the target fails."""
    from test_sjd_distribution import chi_square_pvalue

    n = 40000
    p_draft = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]], dtype=torch.float64)  # (D=2, V=3)
    p_target = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)  # (D+1, V)
    g = _gen(13)
    drafts = torch.stack([torch.multinomial(p_draft[i], n, replacement=True, generator=g) for i in range(2)], 1)  # (n, 2)
    accepted, token = speculative_accept(drafts, p_draft.expand(n, 2, 3), p_target.expand(n, 3, 3), g)
    samples = [tuple(row) for row in torch.cat([drafts, accepted[:, None], token[:, None]], 1).tolist()]
    law = naive_speculative_law(p_draft, p_target)
    assert set(samples) <= {cell for cell, prob in law.items() if prob > 0}, "an impossible outcome was drawn"
    assert chi_square_pvalue(samples, law) > 1e-3
