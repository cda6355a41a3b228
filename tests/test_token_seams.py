"""The seams of token decoding: a user-written proposer, input embeddings and hidden states,
block mode, the lossy sweep cap, per-slot proposer state, coupled SJD on text, and the pass
costs that the adaptive width reads."""

from __future__ import annotations

import pytest
import torch

import jacobix
from jacobix.core.sampling import SamplingConfig
from jacobix.models.protocol import LMOutput
from jacobix.tokens.early_exit import BinTolerance
from jacobix.tokens.proposers import Candidates, DraftSource, JacobiProposer, ProposalContext, Proposer

from conftest import exact_joint, naive_greedy, tiny_model
from test_sjd_distribution import LENGTH, PROMPT, SAMPLES, VOCAB, chi_square_pvalue


class TwoBack(Proposer):
    """The documentation's dozen-line proposer (docs/architecture.md): fresh slots guess the token two positions back."""

    sources = (DraftSource("two-back", prior=0.2),)

    def propose(self, context: ProposalContext) -> Candidates:
        carried = context.carried_tokens()  # (B, D)
        source = (context.positions - 2).clamp_min(0)  # (B, D)
        return Candidates.single(torch.where(context.fresh, context.canvas.gather(1, source), carried))


class Spy(Proposer):
    """Records every context it is shown."""

    def __init__(self) -> None:
        self.contexts: list[ProposalContext] = []
        self.inner = JacobiProposer()

    def propose(self, context: ProposalContext) -> Candidates:
        self.contexts.append(context)
        return self.inner.propose(context)


def test_a_user_written_proposer_runs_exactly_and_is_counted():
    model = tiny_model(3)
    prompt = torch.tensor([1, 2, 1, 2, 1, 2])
    result = jacobix.generate(model, prompt, method="jacobi", window=6, proposer=TwoBack(), max_new_tokens=30)
    assert torch.equal(result.tokens[0], naive_greedy(model, prompt, 30))
    schedule = result.stats.schedule
    assert set(schedule.drafts_by_source) == {"two-back"}
    assert schedule.drafts_by_source["two-back"] == 5 * result.stats.forward_passes
    assert schedule.accepted_by_source["two-back"] == int(result.stats.accepted_per_pass.sum())


def test_a_user_written_proposer_keeps_sjd_lossless():
    """TwoBack's drafts are fixed (one-hot); SJD divides by that, so the joint stays the AR joint."""
    model = tiny_model(11, vocab=VOCAB, dim=16)
    joint = exact_joint(model, PROMPT, LENGTH, SamplingConfig(temperature=1.0))
    result = jacobix.generate(model, [PROMPT] * SAMPLES, method="sjd", window=3, temperature=1.0, max_new_tokens=LENGTH,
                              proposer=TwoBack(), generator=torch.Generator().manual_seed(5))
    assert chi_square_pvalue([tuple(t.tolist()) for t in result.tokens], joint) > 1e-3


def test_proposer_sees_committed_tokens_and_fresh_slots():
    model = tiny_model(1)
    spy = Spy()
    jacobix.generate(model, [[1, 2, 3]], method="jacobi", window=4, proposer=spy, max_new_tokens=9)
    first, second = spy.contexts[0], spy.contexts[1]
    assert first.carried is None and bool(first.fresh.all())
    assert first.length.tolist() == [4]  # the prompt and the token of the prefill pass
    assert first.positions.tolist() == [[4, 5, 6]]
    assert second.carried is not None and second.positions[0, 0] == second.length[0]
    assert first.greedy and first.vocab_size == model.vocab_size


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_llama_embeds_give_bit_identical_logits(dtype):
    model = tiny_model(2, dtype=dtype)
    tokens = torch.tensor([[1, 4, 2, 7], [3, 3, 9, 0]])
    positions = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    plain_cache, embed_cache = model.new_cache(2, 10), model.new_cache(2, 10)
    with torch.no_grad():
        plain = model.forward(tokens, positions, plain_cache)
        via_embeds = model.forward(tokens, positions, embed_cache, embeds=model.embed(tokens))
        no_tokens = model.forward(None, positions, model.new_cache(2, 10), embeds=model.embed(tokens))
    assert torch.equal(plain, via_embeds) and torch.equal(plain, no_tokens)
    assert torch.equal(plain_cache.keys, embed_cache.keys)


def test_llama_hidden_states_are_the_layer_outputs():
    model = tiny_model(2)
    tokens = torch.tensor([[1, 4, 2, 7]])
    with torch.no_grad():
        out = model.forward(tokens, return_hidden=True)
        plain = model.forward(tokens)
        x = model.embed(tokens)
        layers = [x]
        positions = torch.arange(4)[None]
        cos, sin = model.rope_cos[positions][:, None].double(), model.rope_sin[positions][:, None].double()
        for layer in model.layers:
            x = layer(x, cos, sin, positions, None)
            layers.append(x)
    assert isinstance(out, LMOutput) and torch.equal(out.logits, plain)
    assert len(out.hidden_states) == len(model.layers) + 1
    for ours, reference in zip(out.hidden_states[:-1], layers[:-1]):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.hidden_states[-1], model.norm(layers[-1]), rtol=0, atol=1e-12)
    torch.testing.assert_close(model.output(out.hidden_states[-1]), plain, rtol=0, atol=1e-12)


def test_block_mode_is_exact_drafts_once_per_block_and_never_crosses_a_block():
    model = tiny_model(4)
    prompt = torch.tensor([3, 1, 4, 1, 5])
    result = jacobix.generate(model, prompt, method="jacobi", window=8, block=True, max_new_tokens=33, record=True)
    assert torch.equal(result.tokens[0], naive_greedy(model, prompt, 33))
    starts = [int(r.start) for r in result.trajectory]  # committed length before each sweep
    block_starts = set(range(len(prompt) + 1, len(prompt) + 34, 8))  # after the prefill token, blocks of 8
    for record, start in zip(result.trajectory, starts):
        block_end = min(b for b in block_starts if b > start - 8) + 8
        assert start + int(record.n_commit) <= block_end  # commits stop at the block's end
    # A block's drafts are made once: between two sweeps of one block the unaccepted drafts are
    # the previous sweep's outputs (Jacobi), never new guesses.
    for before, after in zip(result.trajectory, result.trajectory[1:]):
        shift = int(after.start - before.start)
        if int(after.start - len(prompt) - 1) % 8 != 0:  # same block
            carried = before.values[0, shift : shift + after.drafts.shape[1]]
            assert torch.equal(after.drafts[0, : len(carried)], carried)


def test_lossy_sweep_cap_commits_the_first_sweep_and_is_counted():
    model = tiny_model(4)
    prompt = torch.tensor([3, 1, 4, 1, 5])
    exact = jacobix.generate(model, prompt, method="jacobi", window=8, block=True, max_new_tokens=33, record=True)
    capped = jacobix.generate(model, prompt, method="jacobi", window=8, block=True, max_new_tokens=33, record=True,
                              lossy_sweep_cap=1)
    assert not exact.stats.lossy and int(exact.stats.lossy_per_pass.sum()) == 0
    assert capped.stats.forward_passes == 4  # 32 tokens after the prefill token, one sweep per block of 8
    first = capped.trajectory[0]
    assert torch.equal(capped.tokens[0][1:9], first.values[0, :8])  # what the first sweep gave, as it stood
    lossy = int(capped.stats.lossy_per_pass.sum())
    assert lossy == 32 - int(capped.stats.accepted_per_pass.sum()) - 4 and capped.stats.lossy
    assert capped.stats.summary()["lossy_tokens"] == lossy
    with pytest.raises(ValueError, match="lossy_sweep_cap"):
        jacobix.generate(model, prompt, method="jacobi", lossy_sweep_cap=0)


class Stateful(Proposer):
    """Keeps each slot's absolute position as its per-slot state and checks that it travels with its slot."""

    def __init__(self) -> None:
        self.checked = 0

    def propose(self, context: ProposalContext) -> Candidates:
        if context.carried is not None:
            carried_positions = context.carried.state[..., 0]  # (B, D)
            kept = ~context.fresh & (carried_positions > 0)  # the bonus slot carries zero state
            assert torch.equal(carried_positions[kept], context.positions[kept])
            self.checked += int(kept.sum())
        tokens = context.carried_tokens()
        state = context.positions[..., None].double()  # (B, D, 1)
        return Candidates(tokens[:, None], None, torch.zeros_like(tokens)[:, None], state=state)


def test_per_slot_state_travels_with_its_slot():
    proposer = Stateful()
    model = tiny_model(5)
    result = jacobix.generate(model, [[1, 2, 3], [4]], method="jacobi", window=5, proposer=proposer, max_new_tokens=20)
    for prompt, tokens in zip(([1, 2, 3], [4]), result.tokens):
        assert torch.equal(tokens, naive_greedy(model, torch.tensor(prompt), 20))
    assert proposer.checked > 0


def test_coupled_sjd_on_text_is_lossless():
    model = tiny_model(11, vocab=VOCAB, dim=16)
    joint = exact_joint(model, PROMPT, LENGTH, SamplingConfig(temperature=1.0))
    result = jacobix.generate(model, [PROMPT] * SAMPLES, method="sjd-coupled", window=4, temperature=1.0,
                              max_new_tokens=LENGTH, generator=torch.Generator().manual_seed(9))
    assert chi_square_pvalue([tuple(t.tolist()) for t in result.tokens], joint) > 1e-3


def test_register_method_adds_a_named_method():
    from jacobix.tokens.methods import METHODS, Method, register_method

    register_method(Method("two-back", False, proposer=lambda init: TwoBack()))
    try:
        model = tiny_model(3)
        out = jacobix.generate(model, [[1, 2, 1]], method="two-back", window=4, max_new_tokens=12)
        assert torch.equal(out.tokens[0], naive_greedy(model, torch.tensor([1, 2, 1]), 12))
        assert set(out.stats.schedule.drafts_by_source) == {"two-back"}
    finally:
        METHODS.pop("two-back")


def test_auto_window_fits_a_short_context_and_reports_auto():
    """Pass costs are probed on the generation's own cache, so a model with a 24-position context works."""
    from jacobix.models import Llama, LlamaConfig

    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=11, dim=16, num_layers=1, num_heads=2, num_kv_heads=1, hidden_dim=32,
                              max_seq_len=24)).double().eval()
    prompt = torch.tensor([1, 2, 3])
    out = jacobix.generate(model, prompt, method="jacobi", window="auto", max_new_tokens=20)
    assert torch.equal(out.tokens[0], naive_greedy(model, prompt, 20))
    assert out.stats.summary()["window"] == "auto (1-16)"
    assert sum(out.stats.schedule.widths.values()) == out.stats.forward_passes


def test_drafts_the_policy_did_not_feed_stay_at_their_positions():
    """A policy that feeds 2 of 7 oracle drafts: the 5 unfed ones are carried to the next pass at
    their own positions, so every pass still accepts everything (3 tokens per pass)."""
    from jacobix.tokens.width import FixedWidth
    from jacobix.tokens.proposers import DraftContext

    model = tiny_model(4)
    prompt = torch.tensor([2, 7, 1])
    reference = torch.cat([prompt, naive_greedy(model, prompt, 40), torch.zeros(64, dtype=torch.long)])

    def oracle(context: DraftContext):
        return reference[context.positions.clamp(max=len(reference) - 1)], None

    out = jacobix.generate(model, prompt, method="jacobi", window=8, init=oracle, policy=FixedWidth(2),
                           max_new_tokens=31, record=True)
    assert torch.equal(out.tokens[0], reference[3:34])
    assert out.stats.forward_passes == 10 and out.stats.accepted_per_pass.flatten().tolist() == [2] * 10
    carried = [record.drafts[0, 2:] for record in out.trajectory[1:]]  # unfed drafts of earlier passes
    assert all(torch.equal(c, reference[int(r.start): int(r.start) + 7][2:]) for c, r in zip(carried, out.trajectory[1:]))


def test_a_rows_sample_does_not_depend_on_its_batch_with_per_row_generators():
    model = tiny_model(7, vocab=VOCAB, dim=16)
    prompts = [[1, 3, 0], [2, 2], [4, 1, 0, 3], [0]]
    options = dict(method="sjd", window=4, temperature=1.0, top_k=4, max_new_tokens=12)
    seeds = [11, 12, 13, 14]
    batch = jacobix.generate(model, prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], **options)
    for prompt, seed, tokens in zip(prompts, seeds, batch.tokens):
        alone = jacobix.generate(model, [prompt], generator=[torch.Generator().manual_seed(seed)], **options)
        assert torch.equal(alone.tokens[0], tokens)
    shuffled = jacobix.generate(model, prompts[::-1], generator=[torch.Generator().manual_seed(s) for s in seeds[::-1]],
                                **options)
    assert all(torch.equal(a, b) for a, b in zip(shuffled.tokens[::-1], batch.tokens))
    with pytest.raises(ValueError, match="one per row"):
        jacobix.generate(model, prompts, generator=[torch.Generator()], **options)


def test_vllm_metrics_on_oracle_and_on_no_drafts():
    model = tiny_model(4)
    prompt = torch.tensor([3, 1, 4])
    reference = torch.cat([prompt, naive_greedy(model, prompt, 25), torch.zeros(64, dtype=torch.long)])

    def oracle(context):
        return reference[context.positions.clamp(max=len(reference) - 1)], None

    out = jacobix.generate(model, prompt, method="jacobi", window=6, init=oracle, max_new_tokens=25)
    stats = out.stats
    assert stats.forward_passes == 4 and stats.num_drafts == 4  # 24 tokens after the prefill token, 6 per pass
    assert stats.num_draft_tokens == 20 and stats.num_accepted_tokens == 20
    assert stats.draft_acceptance_length == 6.0 and torch.equal(stats.acceptance_rate_per_position, torch.ones(5))
    assert stats.per_row() == [{"new_tokens": 25, "forward_passes": 4, "draft_tokens": 20, "accepted_tokens": 20}]
    sequential = jacobix.generate(model, prompt, method="ar", max_new_tokens=25).stats
    assert sequential.num_drafts == 0 and sequential.draft_acceptance_length == 1.0  # passes without drafts do not count
    assert sequential.summary()["num_draft_tokens"] == 0


def test_clock_waits_for_any_accelerator(monkeypatch):
    from jacobix.core import timing

    calls = []
    monkeypatch.setattr(torch, "accelerator", type("Fake", (), {"synchronize": staticmethod(calls.append)}), raising=False)
    timing.clock("cpu")
    assert calls == []
    timing.clock(torch.device("xpu", 0))
    assert calls == [torch.device("xpu", 0)]


def test_bin_tolerance_marks_drafts_within_the_bins_and_exact_elsewhere():
    rule = BinTolerance(first=2, count=5, max_moved=1)  # bin tokens 2..6
    old = torch.tensor([[2, 4, 6, 0, 1, 6]])
    new = torch.tensor([[3, 6, 6, 0, 2, 7]])
    assert rule(old, new).tolist() == [[True, False, True, True, False, False]]
    with pytest.raises(ValueError, match="max_moved"):
        BinTolerance(first=0, count=4, max_moved=-1)


def test_lossy_settled_exact_rule_changes_nothing_and_a_loose_rule_commits_the_first_sweep():
    model = tiny_model(4)
    prompt = torch.tensor([3, 1, 4, 1, 5])
    options = dict(method="jacobi", window=8, block=True, max_new_tokens=33, record=True)
    exact = jacobix.generate(model, prompt, **options, generator=torch.Generator().manual_seed(0))
    same = jacobix.generate(model, prompt, **options, generator=torch.Generator().manual_seed(0),
                            lossy_settled=BinTolerance(first=0, count=11, max_moved=0))
    assert torch.equal(same.tokens[0], exact.tokens[0]) and not same.stats.lossy
    assert same.stats.forward_passes == exact.stats.forward_passes  # "no draft moved" is exact convergence
    loose = jacobix.generate(model, prompt, **options, lossy_settled=BinTolerance(first=0, count=11, max_moved=10))
    assert loose.stats.forward_passes == 4 and loose.stats.lossy  # every block committed after its first sweep
    assert torch.equal(loose.tokens[0][1:9], loose.trajectory[0].values[0, :8])
    with pytest.raises(ValueError, match="lossy_settled"):
        jacobix.generate(model, prompt, method="jacobi", lossy_settled=3)


def test_lossy_settled_commits_once_every_draft_moved_at_most_the_tolerance():
    model = tiny_model(6)
    prompt = torch.tensor([2, 7, 1, 8])
    rule = BinTolerance(first=0, count=11, max_moved=2)
    result = jacobix.generate(model, prompt, method="jacobi", window=6, block=True, max_new_tokens=21, record=True,
                              lossy_settled=rule, generator=torch.Generator().manual_seed(0))
    assert result.stats.lossy
    for record in result.trajectory:  # a sweep that committed its whole block early had settled drafts only
        n = int(record.n_commit[0])
        exact = 1 + int(record.n_accepted[0])
        if n > exact:
            assert bool(rule(record.drafts[0:1, : n - 1], record.values[0:1, : n - 1]).all())
