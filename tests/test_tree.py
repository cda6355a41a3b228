"""Draft trees (SJD-PAC): one forward over a tree equals a forward per branch, the cache keeps only
the accepted path, and decoding with a tree samples exactly as sequential sampling does."""

from __future__ import annotations

import pytest
import torch

import jacobix
from jacobix.core import acceptance, tree as tree_module
from jacobix.core.sampling import SamplingConfig
from jacobix.core.tree import DraftTree, alternatives, path_moves, tree_accept, tree_layout
from jacobix.tokens.decoding import Decoding

from conftest import exact_joint, tiny_model
from test_sjd_distribution import LENGTH, PROMPT, SAMPLES, VOCAB, chi_square_pvalue, draw


def test_layout_of_a_small_tree_by_hand():
    layout = tree_layout(4, 2, 3)  # root + 3 trunk drafts; 2 branches over the first 2 draft positions
    # trunk 0-3; depth 1: the alternative (4); depth 2: one alternative under trunk node 1 (5), two under 4 (6, 7)
    assert layout.node_depth.tolist() == [0, 1, 2, 3, 1, 2, 2, 2]
    assert layout.source.tolist() == [0, 1, 2, 3, 5, 7, 6, 7]  # table: root, 3 drafts, alternatives [d1: 4 5, d2: 6 7]
    assert layout.children.tolist() == [[1, 4], [2, 5], [3, -1], [-1, -1], [6, 7], [-1, -1], [-1, -1], [-1, -1]]
    assert layout.ancestors[7].nonzero().flatten().tolist() == [0, 4, 7]
    assert DraftTree(branches=4, depth=3).extra_nodes == 18 == tree_layout(10, 4, 3).nodes - 10


def test_a_short_trunk_cuts_the_tree():
    layout = tree_layout(2, 3, 4)  # one draft: the tree spans one position
    assert layout.depth == 2 and layout.node_depth.tolist() == [0, 1, 1, 1]


def _prefilled(model, prompt, capacity=64):
    cache = model.new_cache(len(prompt), capacity)
    model(prompt, torch.arange(prompt.shape[1]).expand_as(prompt), cache)
    return cache


def test_tree_forward_equals_a_forward_per_branch():
    model = tiny_model(3, vocab=13)
    layout = tree_layout(6, 3, 3)
    prompt = torch.randint(0, 13, (2, 5), generator=torch.Generator().manual_seed(0))
    table = torch.randint(0, 13, (2, 6 + 2 * 3), generator=torch.Generator().manual_seed(1))
    tokens = table[:, layout.source]  # (B, N)
    positions = 5 + layout.node_depth.expand(2, -1)
    with_cache = model(tokens, positions, _prefilled(model, prompt), tree=layout.ancestors)  # (B, N, V)
    every = torch.cat([torch.arange(5).expand(2, 5), positions], 1)  # (B, 5 + N)
    without = model(torch.cat([prompt, tokens], 1), every, None,
                    tree=torch.block_diag(torch.ones(5, 5).tril().bool(), layout.ancestors) | _prompt_columns(5, layout))
    for node in range(layout.nodes):
        path = layout.ancestors[node].nonzero().flatten()  # ancestors in depth order (nodes are numbered so)
        reference = model(torch.cat([prompt, tokens[:, path]], 1))[:, -1]  # (B, V)
        assert torch.allclose(with_cache[:, node], reference, atol=1e-12, rtol=0)
        assert torch.allclose(without[:, 5 + node], reference, atol=1e-12, rtol=0)


def _prompt_columns(prompt: int, layout) -> torch.Tensor:
    """Cache-free mask rows of the tree nodes see the whole prompt."""
    n = prompt + layout.nodes
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[prompt:, :prompt] = True
    return mask


def test_cache_after_a_tree_pass_equals_decoding_the_accepted_path():
    model, vocab, rows = tiny_model(5, vocab=7), 7, 256
    generator = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, vocab, (rows, 4), generator=generator)
    cache = _prefilled(model, prompt[:, :-1])
    layout = tree_layout(6, 3, 3)
    p_draft = torch.softmax(torch.randn(rows, 5, vocab, generator=generator, dtype=torch.float64), -1)
    drafts = torch.multinomial(p_draft.flatten(0, 1), 1, generator=generator).view(rows, 5)
    branches, laws = alternatives(p_draft[:, :2], drafts[:, :2], 3, generator)
    table = torch.cat([prompt[:, -1:], drafts, branches.flatten(1)], 1)
    root = torch.full((rows,), 3)
    logits = model(table[:, layout.source], root[:, None] + layout.node_depth, cache, tree=layout.ancestors)
    verdict = tree_accept(layout, table, laws, p_draft, torch.softmax(logits, -1), generator)
    cache.move_slots(*path_moves(verdict, root))
    assert (verdict.off_trunk < 6).sum() > 20  # many rows took a branch
    for row in range(rows):
        committed = torch.cat([prompt[row], verdict.values[row, : verdict.n_accepted[row]]])
        fresh = _prefilled(model, committed[None])
        n = len(committed)
        assert torch.allclose(cache.keys[:, row, :, :n], fresh.keys[:, 0, :, :n], atol=1e-12, rtol=0)
        assert torch.allclose(cache.values[:, row, :, :n], fresh.values[:, 0, :, :n], atol=1e-12, rtol=0)


@pytest.fixture(scope="module")
def toy():
    return tiny_model(11, vocab=VOCAB, dim=16)


TREE_CASES = {
    "sjd-random-K3D3": dict(method="sjd", init="random", window=4, tree=DraftTree(branches=3, depth=3), sampling=dict(temperature=1.0)),
    "pac-repeat-K2D3": dict(method="sjd-pac", init="repeat", window=3, tree=DraftTree(branches=2, depth=3),
                            sampling=dict(temperature=1.0)),
    "pac-random-K4D2-topk": dict(method="sjd-pac", init="random", window=4, tree=DraftTree(branches=4, depth=2),
                                 sampling=dict(temperature=1.2, top_k=3)),
    "coupled-random-K3D3": dict(method="sjd-coupled", init="random", window=4, tree=DraftTree(branches=3, depth=3),
                                sampling=dict(temperature=0.8)),
}


@pytest.mark.parametrize("name", sorted(TREE_CASES))
def test_tree_decoding_matches_exact_joint(toy, name):
    case = dict(TREE_CASES[name])
    sampling = case.pop("sampling")
    joint = exact_joint(toy, PROMPT, LENGTH, SamplingConfig(**sampling))
    samples = draw(toy, seed=20 + sorted(TREE_CASES).index(name), decoding=Decoding(**case), sampling=SamplingConfig(**sampling))
    assert chi_square_pvalue(samples, joint) > 1e-3


def test_pac_with_guidance_matches_exact_guided_joint(toy):
    sampling = SamplingConfig(temperature=1.0, top_k=4)
    joint = exact_joint(toy, PROMPT, LENGTH, sampling, negative=[2], cfg_scale=2.0)
    decoding = Decoding(method="sjd-pac", window=4, tree=DraftTree(branches=3, depth=3))
    samples = draw(toy, seed=31, decoding=decoding, sampling=sampling, cfg_scale=2.0, negative_input_ids=[[2]] * SAMPLES)
    assert chi_square_pvalue(samples, joint) > 1e-3


def _unrenormalised(p_target, p_draft, siblings, generator):
    """Wrong residual: every sibling tried against the target itself, not what is left of it."""
    accept = torch.stack([(p_target.gather(1, siblings[:, k : k + 1]).squeeze(1)
                           / p_draft[:, k].gather(1, siblings[:, k : k + 1]).squeeze(1).clamp_min(1e-30)).clamp(max=1)
                          for k in range(siblings.shape[1])], 1)
    return _decide(accept, p_target, siblings, generator)


def _first_law(p_target, p_draft, siblings, generator):
    """Wrong ratio: siblings drawn without replacement but tested as draws from branch 0's law."""
    same = p_draft[:, :1].expand_as(p_draft)
    accept, residual = acceptance.sibling_law(p_target, same, siblings)
    return _decide(accept, residual[:, -1], siblings, generator)


def _decide(accept, fallback_law, siblings, generator):
    passed = torch.rand(accept.shape, generator=generator, dtype=accept.dtype) < accept
    k = siblings.shape[1]
    chosen = torch.where(passed.any(1), passed.long().argmax(1), k)
    fallback = torch.multinomial(fallback_law.clamp_min(0) + 1e-30, 1, generator=generator).squeeze(1)
    token = torch.where(chosen < k, siblings.gather(1, chosen.clamp(max=k - 1)[:, None]).squeeze(1), fallback)
    return chosen, token


@pytest.mark.parametrize("mutant", [_unrenormalised, _first_law])
def test_the_chi_square_test_catches_a_wrong_tree_rule(toy, monkeypatch, mutant):
    monkeypatch.setattr(tree_module, "siblings_accept", mutant)
    sampling = SamplingConfig(temperature=1.0)
    joint = exact_joint(toy, PROMPT, LENGTH, sampling)
    decoding = Decoding(method="sjd-pac", window=3, init="repeat", tree=DraftTree(branches=4, depth=3))
    samples = draw(toy, seed=41, decoding=decoding, sampling=sampling)
    assert chi_square_pvalue(samples, joint) < 1e-6


def test_bad_tree_shapes_are_refused_before_any_work(toy):
    with pytest.raises(ValueError, match="DraftTree.depth must be an int >= 2"):
        DraftTree(branches=4, depth=0)
    with pytest.raises(ValueError, match="needs a sampling method"):
        Decoding(method="jacobi", tree=DraftTree())
    with pytest.raises(ValueError, match="branches.*vocabulary"):
        jacobix.generate(toy, [PROMPT], decoding=Decoding(method="sjd", window=4, tree=DraftTree(branches=VOCAB + 1, depth=2)),
                         sampling=SamplingConfig(temperature=1.0), max_new_tokens=4)
    small = tiny_model(1, vocab=VOCAB, dim=16)
    with pytest.raises(ValueError, match="draft tree"):
        jacobix.generate(small, [PROMPT], decoding=Decoding(method="sjd", window=1000, tree=DraftTree(branches=3, depth=4)),
                         sampling=SamplingConfig(temperature=1.0), max_new_tokens=4)


def _hf_llama(vocab: int = 11):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(4)
    config = tf.LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0)
    return tf.LlamaForCausalLM(config).double().eval()


def test_tree_forward_through_the_transformers_adapter_equals_a_forward_per_branch():
    from jacobix.integrations.hf import as_causal_lm

    hf = _hf_llama()
    lm = as_causal_lm(hf)
    layout = tree_layout(5, 3, 3)
    prompt = torch.randint(0, 11, (2, 4), generator=torch.Generator().manual_seed(0))
    table = torch.randint(0, 11, (2, 5 + 2 * 3), generator=torch.Generator().manual_seed(1))
    tokens = table[:, layout.source]
    cache = lm.new_cache(2, 40)
    lm.forward(prompt, torch.arange(4).expand(2, 4), cache)
    logits = lm.forward(tokens, 4 + layout.node_depth.expand(2, -1), cache, tree=layout.ancestors)  # (B, N, V)
    with torch.no_grad():
        for node in range(layout.nodes):
            path = layout.ancestors[node].nonzero().flatten()
            reference = hf(torch.cat([prompt, tokens[:, path]], 1)).logits[:, -1]
            assert torch.allclose(logits[:, node], reference, atol=1e-12, rtol=0)
    root = torch.full((2,), 4)
    source = root[:, None] + torch.tensor([[0, 6, 9]])  # move a branch path (nodes 6, 9 at depths 1, 2) into place
    cache.move_slots(source, root[:, None] + torch.tensor([[0, 1, 2]]))
    assert torch.equal(cache.tokens[:, 5:7], tokens[:, [6, 9]])


def test_pac_through_the_transformers_adapter_matches_exact_joint():
    from jacobix.integrations.hf import as_causal_lm

    lm = as_causal_lm(_hf_llama(VOCAB))
    sampling = SamplingConfig(temperature=1.0)
    decoding = Decoding(method="sjd-pac", window=3, init="repeat", tree=DraftTree(branches=3, depth=3))
    result = jacobix.generate(lm, [PROMPT] * SAMPLES, decoding=decoding, sampling=sampling, max_new_tokens=LENGTH,
                              generator=torch.Generator().manual_seed(51))
    samples = [tuple(t.tolist()) for t in result.tokens]
    assert chi_square_pvalue(samples, _hf_joint(lm, sampling)) > 1e-3


def _hf_joint(lm, sampling) -> dict:
    """Exact joint of LENGTH tokens after PROMPT under sequential sampling, by enumeration (cache-free passes)."""
    from itertools import product

    from conftest import reference_probs

    joint = {}
    with torch.no_grad():
        for sequence in product(range(VOCAB), repeat=LENGTH):
            ids = torch.tensor([PROMPT + list(sequence)])
            probs = reference_probs(lm.model(ids).logits[0, len(PROMPT) - 1 : -1], temperature=sampling.temperature)
            joint[sequence] = float(torch.prod(probs[torch.arange(LENGTH), torch.tensor(sequence)]))
    return joint


def test_a_tree_decodes_with_one_generator_per_row(toy):
    decoding = Decoding(method="sjd-pac", window=4, tree=DraftTree(branches=3, depth=3))
    generators = [torch.Generator().manual_seed(row) for row in range(3)]
    out = jacobix.generate(toy, [PROMPT] * 3, decoding=decoding, sampling=SamplingConfig(temperature=1.0),
                           max_new_tokens=12, generator=generators)
    again = jacobix.generate(toy, [PROMPT], decoding=decoding, sampling=SamplingConfig(temperature=1.0),
                             max_new_tokens=12, generator=[torch.Generator().manual_seed(1)])
    assert [len(t) for t in out.tokens] == [12, 12, 12] and out.stats.branch_per_pass is not None
    assert len(again.tokens[0]) == 12


def test_the_tree_flag_is_derived_from_the_spec(capsys):
    from jacobix.cli.main import main

    assert main(["generate", "ROMEO:", "--model", "shakespeare", "--method", "sjd-pac", "--temperature", "0.8",
                 "--tree", "3,3", "--window", "8", "--max-new-tokens", "12", "--no-progress"]) == 0
    assert main(["generate", "ROMEO:", "--model", "shakespeare", "--method", "sjd", "--temperature", "1", "--tree", "4"]) == 2
    assert "BRANCHES,DEPTH" in capsys.readouterr().err
