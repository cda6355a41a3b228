"""Draft rules against naive loop implementations written here (one row, one slot at a time).

Kept apart from the other tests so they are easy to adapt when the token layer changes: they
use only the public call ``Rule(...)(DraftContext(canvas, positions, fresh, prompt_length,
vocab_size, generator))`` and compare the fresh slots (the only ones the engine uses).
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from jacobix.images.proposers import CodeRandomInit, GridTableInit
from jacobix.tokens.proposers.basic import CopyInit, DraftContext, RandomInit


def random_contexts(seed: int, count: int, *, vocab: int = 50, width: int = 9):
    """Random rows: prompt, committed tokens, some carried drafts, then fresh slots."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(count):
        b = 3
        prompt = torch.randint(1, 5, (b,), generator=g)  # (B,)
        committed = prompt + torch.randint(0, 12, (b,), generator=g)  # (B,) tokens known
        carried = torch.randint(0, width, (b,), generator=g)  # (B,) carried drafts at the window front
        canvas = torch.randint(vocab, (b, 64), generator=g)  # placeholders past the carried slots are garbage
        positions = committed[:, None] + torch.arange(width)  # (B, D)
        fresh = torch.arange(width)[None] >= carried[:, None]  # (B, D) a suffix
        yield DraftContext(canvas, positions, fresh, prompt, vocab, torch.Generator().manual_seed(seed))


def naive_copy(context: DraftContext, offset: int) -> list[list[int | None]]:
    """CopyInit(offset) by hand: hop back ``offset`` until the source is known; prompt -> last known token."""
    out = []
    for row in range(context.canvas.shape[0]):
        positions, fresh = context.positions[row].tolist(), context.fresh[row].tolist()
        first_fresh = positions[fresh.index(True)] if any(fresh) else positions[-1] + 1
        prompt = int(context.prompt_length[row])
        tokens = []
        for position, is_fresh in zip(positions, fresh):
            if not is_fresh:
                tokens.append(None)  # not compared: the engine keeps its carried draft
                continue
            source = position - offset
            while source >= first_fresh:  # a fresh source copies what it copies
                source -= offset
            if source < prompt:
                source = first_fresh - 1
            tokens.append(int(context.canvas[row, source]))
        out.append(tokens)
    return out


@pytest.mark.parametrize("offset", [1, 2, 3, 7])
def test_copy_init_equals_the_naive_rule(offset):
    for context in random_contexts(offset, 25):
        tokens, p_draft = CopyInit(offset)(context)
        assert p_draft is None
        expected = naive_copy(context, offset)
        got = [[int(t) if f else None for t, f in zip(row, fresh)] for row, fresh in zip(tokens.tolist(), context.fresh.tolist())]
        assert got == expected, (offset, context.positions.tolist(), context.fresh.tolist())


def test_copy_init_hand_example_offset_two():
    # prompt [7, 8], committed [1, 2, 3], carried draft 4 at position 5, fresh slots 6, 7, 8
    canvas = torch.tensor([[7, 8, 1, 2, 3, 4, 0, 0, 0, 0]])
    context = DraftContext(canvas, torch.tensor([[5, 6, 7, 8]]), torch.tensor([[False, True, True, True]]),
                           torch.tensor([2]), 10, None)
    tokens, _ = CopyInit(2)(context)
    assert tokens[0, 1:].tolist() == [3, 4, 3]  # position 6 <- 4, 7 <- 5 (the carried 4), 8 <- 6 <- 4
    start = DraftContext(canvas, torch.tensor([[2, 3, 4]]), torch.ones(1, 3, dtype=torch.bool), torch.tensor([2]), 10, None)
    assert CopyInit(2)(start)[0].tolist() == [[8, 8, 8]]  # sources 0, 1 are prompt; 4 <- 2 <- prompt: last known token


def test_random_init_is_uniform_over_the_vocabulary_and_reports_it():
    n, vocab = 12000, 6
    context = DraftContext(torch.zeros(n, 8, dtype=torch.long), torch.arange(2, 4).expand(n, 2), torch.ones(n, 2, dtype=torch.bool),
                           torch.ones(n, dtype=torch.long), vocab, torch.Generator().manual_seed(0))
    tokens, p_draft = RandomInit()(context)
    torch.testing.assert_close(p_draft, torch.full((n, 2, vocab), 1.0 / vocab), rtol=0, atol=0)
    counts = torch.bincount(tokens.flatten(), minlength=vocab)
    assert len(counts) == vocab
    assert chisquare(counts.numpy()).pvalue > 1e-3
    again, _ = RandomInit()(DraftContext(*[getattr(context, f) for f in ("canvas", "positions", "fresh", "prompt_length", "vocab_size")],
                                         torch.Generator().manual_seed(0)))
    assert torch.equal(tokens, again)  # the explicit generator is the only source of randomness


def test_code_random_init_is_uniform_over_codes_only():
    n, codes, vocab = 12000, 5, 9
    context = DraftContext(torch.zeros(n, 8, dtype=torch.long), torch.arange(1, 3).expand(n, 2), torch.ones(n, 2, dtype=torch.bool),
                           torch.ones(n, dtype=torch.long), vocab, torch.Generator().manual_seed(1))
    tokens, p_draft = CodeRandomInit(codes)(context)
    expected = torch.zeros(vocab)
    expected[:codes] = 1.0 / codes
    torch.testing.assert_close(p_draft, expected.expand(n, 2, vocab), rtol=0, atol=0)
    counts = torch.bincount(tokens.flatten(), minlength=vocab)
    assert int(counts[codes:].sum()) == 0
    assert chisquare(counts[:codes].numpy()).pvalue > 1e-3


def naive_table_law(init: GridTableInit, context: DraftContext, tokens: torch.Tensor) -> list[list[list[float] | None]]:
    """The law each fresh draft of ``GridTableInit`` was drawn from, given the drafts above it.

    Fresh slots are written into a copy of the canvas first (a draft may sit above another);
    class = last prompt token - codes (clamped to the null row), cell = position - prompt length.
    """
    k, grid = init.num_codes, init.grid
    laws = []
    for row in range(tokens.shape[0]):
        canvas = context.canvas[row].tolist()
        positions, fresh = context.positions[row].tolist(), context.fresh[row].tolist()
        for position, is_fresh, token in zip(positions, fresh, tokens[row].tolist()):
            if is_fresh:
                canvas[position] = token
        prompt = int(context.prompt_length[row])
        klass = min(max(canvas[prompt - 1] - k, 0), init.prior.shape[0] - 1)
        row_laws = []
        for position, is_fresh in zip(positions, fresh):
            if not is_fresh:
                row_laws.append(None)
                continue
            cell = min(max(position - prompt, 0), init.prior.shape[1] - 1)
            weights = [float(init.prior[klass, cell, c]) for c in range(k)]
            if init.above is not None and cell >= grid:
                above = min(max(canvas[position - grid], 0), k - 1)
                weights = [w * float(init.above[above, c]) for c, w in enumerate(weights)]
            total = sum(weights)
            row_laws.append([w / total for w in weights])
        laws.append(row_laws)
    return laws


@pytest.mark.parametrize("use_above", [False, True])
def test_grid_table_init_reports_the_naive_conditional_law(use_above):
    codes, grid, classes = 6, 3, 2
    g = torch.Generator().manual_seed(3)
    prior = torch.softmax(torch.randn(classes + 1, grid * grid, codes, generator=g), -1)
    above = torch.softmax(2 * torch.randn(codes, codes, generator=g), -1) if use_above else None
    init = GridTableInit(prior, above, codes, grid)
    b, width = 4, 7
    canvas = torch.randint(codes, (b, 1 + grid * grid + width), generator=g)
    canvas[:, 0] = torch.tensor([codes, codes + 1, codes + 2, 0])  # classes 0, 1, the null row, and a code (clamped to 0)
    committed = torch.tensor([1, 3, 4, 2])
    positions = committed[:, None] + torch.arange(width)  # (B, D)
    fresh = torch.arange(width)[None] >= torch.tensor([0, 2, 1, 3])[:, None]
    context = DraftContext(canvas, positions, fresh, torch.ones(b, dtype=torch.long), codes + 3, torch.Generator().manual_seed(4))
    tokens, p_draft = init(context)
    laws = naive_table_law(init, context, tokens)
    for row in range(b):
        for slot in range(width):
            if laws[row][slot] is None:
                continue
            torch.testing.assert_close(p_draft[row, slot, :codes].double(), torch.tensor(laws[row][slot], dtype=torch.float64), rtol=1e-5, atol=1e-7)
            assert float(p_draft[row, slot, codes:].abs().sum()) == 0.0
            assert int(tokens[row, slot]) < codes
