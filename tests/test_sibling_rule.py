"""The multi-candidate rule for drawn siblings (SJD-PAC's tree rule): its law gives exactly the
target distribution by exact enumeration for 1-4 siblings, the wrong-residual and wrong-ratio
variants do not, and sampling from it passes the chi-square test that those variants fail."""

from __future__ import annotations

import itertools

import pytest
import torch

from jacobix.core.acceptance import sibling_law, siblings_accept
from test_sjd_distribution import chi_square_pvalue

V = 4


def law_distribution(law, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The exact output distribution (V,) of a sibling rule, over every tuple of independently drawn siblings."""
    k_count = q.shape[0]
    return enumerated(law, p, ((tuple_, q) for tuple_ in itertools.product(range(V), repeat=k_count)))


def enumerated(law, p: torch.Tensor, draws) -> torch.Tensor:
    """The exact output distribution (V,) of a sibling rule over ``draws``: every possible tuple of
    siblings with the (K, V) laws they were drawn from (sibling k from row k, given the ones before)."""
    out = torch.zeros(V, dtype=torch.float64)
    for tuple_, laws in draws:
        weight = float(torch.prod(torch.stack([laws[k, x] for k, x in enumerate(tuple_)])))
        if weight == 0:
            continue
        accept, residual = law(p[None], laws[None], torch.tensor([tuple_]))
        reach = 1.0
        for k, x in enumerate(tuple_):
            out[x] += weight * reach * accept[0, k]
            reach = reach * (1 - accept[0, k])
        out += weight * reach * residual[0, -1]
    return out


def wrong_residual_law(p, q, siblings):
    """Mutant: after a rejection the residual is taken from the target, not from the one in force."""
    accept, residual = sibling_law(p, q, siblings)
    for k in range(1, residual.shape[1]):
        rest = (p - q[:, k - 1]).clamp_min(0)
        residual[:, k] = rest / rest.sum(-1, keepdim=True)
    return accept, residual


def wrong_ratio_law(p, q, siblings):
    """Mutant: every sibling is tested against the target, not against the distribution in force."""
    accept, residual = sibling_law(p, q, siblings)
    for k in range(siblings.shape[1]):
        x = siblings[:, k : k + 1]
        accept[:, k] = (p.gather(1, x) / q[:, k].gather(1, x)).clamp(max=1).squeeze(1)
    return accept, residual


def random_case(seed: int, k_count: int, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    p = torch.rand(V, generator=generator, dtype=torch.float64) ** 2
    q = torch.rand(1 if shared else k_count, V, generator=generator, dtype=torch.float64) ** 2
    return p / p.sum(), (q / q.sum(-1, keepdim=True)).expand(k_count, V)


@pytest.mark.parametrize("k_count", [1, 2, 3, 4])
@pytest.mark.parametrize("shared", [True, False], ids=["one-draft-distribution", "one-per-sibling"])
def test_the_sibling_law_gives_the_target_exactly(k_count, shared):
    for seed in range(5):
        p, q = random_case(seed, k_count, shared)
        torch.testing.assert_close(law_distribution(sibling_law, p, q), p, rtol=0, atol=1e-12)


def test_hand_built_cases_one_hot_drafts_and_a_draft_equal_to_the_target():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=torch.float64)
    one_hot = torch.eye(V, dtype=torch.float64)[[3, 1]]  # fixed drafts: a token p cannot produce, then token 1
    torch.testing.assert_close(law_distribution(sibling_law, p, one_hot), p, rtol=0, atol=1e-12)
    accept, residual = sibling_law(p[None], one_hot[None], torch.tensor([[3, 1]]))
    assert accept[0].tolist() == [0.0, 0.25] and residual[0, -1].tolist() == [2 / 3, 0.0, 1 / 3, 0.0]
    accept, _ = sibling_law(p[None], p.expand(2, V)[None], torch.tensor([[0, 2]]))
    assert accept[0, 0] == 1.0  # q = p: the first sibling is always taken


@pytest.mark.parametrize("mutant", [wrong_residual_law, wrong_ratio_law], ids=["wrong-residual", "wrong-ratio"])
def test_the_enumeration_catches_a_wrong_rule(mutant):
    gaps = [float((law_distribution(mutant, *random_case(seed, 3, False)) - random_case(seed, 3, False)[0]).abs().max())
            for seed in range(5)]
    assert max(gaps) > 1e-3


def test_sampling_the_rule_passes_chi_square_where_a_mutant_fails():
    p, q = random_case(7, 3, False)
    n = 20000
    generator = torch.Generator().manual_seed(0)
    siblings = torch.stack([torch.multinomial(q[k], n, replacement=True, generator=generator) for k in range(3)], 1)  # (N, 3)
    joint = {(v,): float(p[v]) for v in range(V)}
    _, token = siblings_accept(p.expand(n, V), q.expand(n, 3, V), siblings, generator)
    assert chi_square_pvalue([(int(t),) for t in token], joint) > 1e-3
    accept, residual = wrong_ratio_law(p.expand(n, V), q.expand(n, 3, V), siblings)
    passed = torch.rand(n, 3, generator=generator, dtype=torch.float64) < accept
    chosen = torch.where(passed.any(1), passed.long().argmax(1), 3)
    fallback = torch.multinomial(residual[:, -1], 1, generator=generator).squeeze(1)
    wrong = torch.where(chosen < 3, siblings.gather(1, chosen.clamp(max=2)[:, None]).squeeze(1), fallback)
    assert chi_square_pvalue([(int(t),) for t in wrong], joint) < 1e-6


def test_chosen_index_says_which_sibling_was_taken():
    p = torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    q = torch.eye(V, dtype=torch.float64)[[0, 1, 2]][None]  # siblings 0, 1, 2 as fixed drafts
    chosen, token = siblings_accept(p, q, torch.tensor([[0, 1, 2]]), torch.Generator().manual_seed(0))
    assert chosen.tolist() == [1] and token.tolist() == [1]
    chosen, token = siblings_accept(p, q[:, [0, 2]], torch.tensor([[0, 2]]), torch.Generator().manual_seed(0))
    assert chosen.tolist() == [2] and token.tolist() == [1]  # both rejected: drawn from the residual


def without_replacement(q: torch.Tensor, tried: tuple[int, ...]) -> torch.Tensor:
    """``q`` with the tokens already tried removed, renormalised."""
    rest = q.clone()
    rest[list(tried)] = 0
    return rest / rest.sum()


@pytest.mark.parametrize("k_count", [2, 3])
def test_siblings_drawn_without_replacement_give_the_target_exactly(k_count):
    for seed in range(4):
        p, q = random_case(seed, 1, True)
        q = q[0]
        draws = ((tuple_, torch.stack([without_replacement(q, tuple_[:k]) for k in range(k_count)]))
                 for tuple_ in itertools.permutations(range(V), k_count))
        out = enumerated(sibling_law, p, draws)
        torch.testing.assert_close(out, p, rtol=0, atol=1e-12)
