"""Multiblock decoding: exact under greedy decoding, its width rule on hand-built passes, its spec and flag."""

from __future__ import annotations

import argparse

import pytest
import torch

import jacobix
from jacobix.cli.flags import add_spec_arguments
from jacobix.tokens.decoding import Decoding
from jacobix.tokens.width.multiblock import MultiBlock, MultiBlockWidth, agreement

from conftest import naive_greedy, tiny_model


@pytest.mark.parametrize("shape", [MultiBlock(block=4, blocks=2), MultiBlock(block=3, blocks=3, spawn_at=34),
                                   MultiBlock(block=8, blocks=2, spawn_at=100)])
def test_multiblock_equals_greedy_ar_token_for_token(shape):
    model = tiny_model(5)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(11, (n,), generator=g) for n in (3, 6, 4)]
    for lookahead in (False, True):  # with the n-gram pool's candidates (recycled drafts) too
        out = jacobix.generate(model, prompts, decoding=Decoding(method="jacobi", init="context", multiblock=shape,
                                                                  lookahead=lookahead),
                               max_new_tokens=30, generator=torch.Generator().manual_seed(0))
        for prompt, tokens in zip(prompts, out.tokens):
            assert torch.equal(tokens, naive_greedy(model, prompt, 30))
        assert out.stats.forward_passes <= 30


def test_the_rule_follows_the_worked_example():
    rule = MultiBlockWidth(MultiBlock(block=4, blocks=2, spawn_at=75), drafts=8)
    empty = torch.zeros(1, 0)
    assert rule.choose(empty, empty) == 4  # one block
    rule.settle(torch.tensor([[True, True, False, True]]), torch.tensor([2]))  # 3 of 4 committed: a second block
    assert rule.choose(empty, empty) == 1 + 4  # the real-active block's last draft, then the pseudo block
    rule.settle(torch.tensor([[False, True, False, True, True]]), torch.tensor([0]))  # pseudo block: 1 settled slot
    assert rule.choose(empty, empty) == 4
    rule.restart()
    assert rule.choose(empty, empty) == 4


def test_blocks_start_up_to_the_limit_and_end_as_they_are_committed():
    rule = MultiBlockWidth(MultiBlock(block=2, blocks=3, spawn_at=100), drafts=6)
    empty = torch.zeros(1, 0)
    rule.settle(torch.tensor([[False, True]]), torch.tensor([0]))  # 1 of 2 committed: not settled
    assert rule.choose(empty, empty) == 1
    rule.settle(torch.tensor([[True]]), torch.tensor([0]))  # committed, and the fresh block is newest: 0 settled
    assert rule.choose(empty, empty) == 2
    rule.settle(torch.tensor([[True, True]]), torch.tensor([1]))  # whole block committed (2): fresh, not settled
    assert rule.choose(empty, empty) == 2
    rule.settle(torch.tensor([[False, False]]), torch.tensor([0]))  # 1 committed ... then
    rule.settle(torch.tensor([[True]]), torch.tensor([0]))
    assert rule.choose(empty, empty) == 2
    rule.active, rule.left = 2, 2  # two blocks in flight; the newest agrees throughout: a third starts
    rule.settle(torch.tensor([[False, True, True, True]]), torch.tensor([0]))
    assert (rule.active, rule.left) == (3, 1) and rule.choose(empty, empty) == 1 + 2 + 2
    rule.settle(torch.tensor([[True, True, True, True, True]]), torch.tensor([4]))  # commits 5: all three end
    assert rule.active == 1 and rule.left == 2  # a fresh block


def test_agreement_compares_each_draft_with_the_prediction_before_it():
    drafts = torch.tensor([[5, 6, 7]])
    outputs = torch.tensor([[5, 1, 7, 9]])  # slot 0 predicts draft 0, ...
    assert agreement(drafts, outputs).tolist() == [[True, False, True]]


def test_the_spec_refuses_what_multiblock_cannot_do():
    shape = MultiBlock(block=4, blocks=2)
    with pytest.raises(ValueError, match="needs method='jacobi'"):
        Decoding(method="sjd", multiblock=shape)
    with pytest.raises(ValueError, match="leave window at 'auto'"):
        Decoding(method="jacobi", window=16, multiblock=shape)
    with pytest.raises(ValueError, match="does not combine with block"):
        Decoding(method="jacobi", multiblock=shape, block=True)
    with pytest.raises(ValueError, match="spawn_at in 1..100"):
        MultiBlock(block=4, blocks=2, spawn_at=0)
    with pytest.raises(ValueError, match="whole number"):
        MultiBlock(block=4, blocks=2, spawn_at=0.85)
    spec = Decoding(method="jacobi", multiblock=shape)
    assert spec.max_window == 9 and not spec.adaptive
    assert Decoding.from_record(spec.record()) == spec


def test_the_flag_is_derived_from_the_spec():
    parser = argparse.ArgumentParser()
    add_spec_arguments(parser)
    args = parser.parse_args(["--multiblock", "16,2,85"])
    assert args.multiblock == MultiBlock(block=16, blocks=2, spawn_at=85)
