"""The transformers adapter: greedy equality with transformers' own ``generate`` on tiny random
models of each supported architecture (built from local configs, no hub), batches with left
padding, EOS inside the window, logits processors, SJD's distribution through the HF path, and
clear refusals of caches that cannot roll back."""

from __future__ import annotations

import os

import pytest
import torch

tf = pytest.importorskip("transformers", reason="the HF adapter tests need transformers: pip install 'jacobix[hf]'")

import jacobix  # noqa: E402
from jacobix.integrations.hf import check_supported, jacobi_generate, lookahead_generate, sjd_generate  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB, PAD = 48, 0
SHAPE = dict(vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=1, eos_token_id=None)
LLAMA_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)

CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**SHAPE, **LLAMA_LIKE),
    "qwen2": lambda: tf.Qwen2Config(**SHAPE, **LLAMA_LIKE),
    "mistral": lambda: tf.MistralConfig(**SHAPE, **LLAMA_LIKE, sliding_window=None),
    "mistral-window6": lambda: tf.MistralConfig(**SHAPE, **LLAMA_LIKE, sliding_window=6),
    "gpt2": lambda: tf.GPT2Config(**SHAPE, n_embd=32, n_layer=2, n_head=4, n_positions=256),
}


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[name](), dtype=torch.float64).eval()
    with torch.no_grad():  # sharper logits: varied but deterministic greedy text
        model.get_output_embeddings().weight.mul_(6.0)
    return model


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


PROMPTS = [[1, 5, 9, 3, 7, 11], [1, 20, 4], [1, 8, 8, 30, 2, 17, 40, 6, 9]]


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_greedy_equals_transformers_generate(arch):
    model = build(arch)
    ids, mask = left_padded(PROMPTS)
    reference = model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False)  # (B, L + 24)
    for options in (dict(window=5), dict(window="auto", lookahead=True)):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                             custom_generate=jacobi_generate, **options)
        assert torch.equal(out, reference), (arch, options)
    single = model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=24, do_sample=False)
    for options in (dict(method="ar"), dict(method="jacobi", window=8), dict(method="jacobi", lookahead=True, window=6)):
        result = jacobix.generate(model, [PROMPTS[0]], max_new_tokens=24, **options)
        assert torch.equal(result.tokens[0], single[0, len(PROMPTS[0]):]), (arch, options)


def test_lookahead_pool_accepts_drafts_on_repetitive_text():
    model = build("llama", seed=3)
    prompt = [1, 5, 9, 3, 7, 11] * 4
    plain = jacobix.generate(model, [prompt], method="ar", max_new_tokens=40)
    pooled = jacobix.generate(model, [prompt], method="jacobi", window=8, lookahead=True, max_new_tokens=40)
    assert torch.equal(pooled.tokens[0], plain.tokens[0])
    assert pooled.stats.schedule.pool_drafts > 0
    assert pooled.stats.forward_passes < plain.stats.forward_passes


class Recorder:
    """A transformers-style streamer that keeps what it is given."""

    def __init__(self) -> None:
        self.chunks, self.ended = [], False

    def put(self, value: torch.Tensor) -> None:
        self.chunks.append(value.reshape(-1).tolist())

    def end(self) -> None:
        self.ended = True


def test_streamer_gets_the_prompt_then_committed_tokens_like_transformers():
    model = build("llama", seed=3)
    prompt = [1, 5, 9, 3, 7, 11] * 4
    theirs, ours = Recorder(), Recorder()
    model.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, streamer=theirs)
    result = jacobix.generate(model, [prompt], method="jacobi", window=8, lookahead=True, max_new_tokens=30, streamer=ours)
    assert ours.ended and ours.chunks[0] == theirs.chunks[0] == prompt
    assert sum(ours.chunks[1:], []) == sum(theirs.chunks[1:], []) == result.tokens[0].tolist()
    assert len(ours.chunks) - 1 == result.stats.forward_passes < len(theirs.chunks) - 1  # several tokens per chunk
    with pytest.raises(ValueError, match="one prompt"):
        jacobix.generate(model, [prompt, prompt], method="jacobi", max_new_tokens=4, streamer=Recorder())


def test_eos_inside_window_stops_where_ar_stops():
    model = build("qwen2")
    ids, mask = left_padded(PROMPTS)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
    eos = int(free[0, ids.shape[1] + 6])  # a token that row 0 emits mid-window
    model.generation_config.eos_token_id = eos
    reference = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=PAD)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=eos,
                         pad_token_id=PAD, custom_generate=jacobi_generate, window=12)
    assert torch.equal(out, reference)
    row0 = out[0, ids.shape[1] :].tolist()
    assert row0[row0.index(eos) + 1 :] == [PAD] * (len(row0) - row0.index(eos) - 1)


def test_transformers_logits_processors_apply_per_position():
    model = build("llama", seed=1)
    ids, mask = left_padded(PROMPTS[:2])
    options = dict(attention_mask=mask, max_new_tokens=16, do_sample=False, repetition_penalty=1.5, no_repeat_ngram_size=2)
    reference = model.generate(ids, **options)
    assert torch.equal(model.generate(ids, custom_generate=jacobi_generate, window=4, **options), reference)


def _exact_joint(model, prompt: list[int], length: int) -> dict[tuple[int, ...], float]:
    import itertools

    joint = {}
    vocab = model.config.vocab_size
    with torch.no_grad():
        for seq in itertools.product(range(vocab), repeat=length):
            logits = model(torch.tensor([prompt + list(seq)])).logits[0, len(prompt) - 1 : -1]  # (length, V)
            probs = logits.double().softmax(-1)
            joint[seq] = float(probs[torch.arange(length), torch.tensor(seq)].prod())
    return joint


@pytest.mark.parametrize("lookahead", [False, True])
def test_sjd_through_hf_matches_exact_joint(lookahead):
    from scipy.stats import chisquare

    torch.manual_seed(4)
    config = tf.LlamaConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, pad_token_id=None, eos_token_id=None)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    prompt, n = [1, 3, 0, 1, 3], 3000
    joint = _exact_joint(model, prompt, 3)
    ids = torch.tensor([prompt] * n)
    out = model.generate(ids, max_new_tokens=3, do_sample=True, temperature=1.0, top_k=None, top_p=None,
                         custom_generate=sjd_generate, window=4, lookahead=lookahead,
                         generator=torch.Generator().manual_seed(7))
    samples = [tuple(r) for r in out[:, len(prompt) :].tolist()]
    counts = {cell: 0 for cell in joint}
    for s in samples:
        counts[s] += 1
    cells = [c for c in joint if joint[c] * n >= 5]
    rest = [c for c in joint if joint[c] * n < 5]
    observed = [counts[c] for c in cells] + ([sum(counts[c] for c in rest)] if rest else [])
    expected = [joint[c] * n for c in cells] + ([sum(joint[c] for c in rest) * n] if rest else [])
    expected = [e * n / sum(expected) for e in expected]
    assert chisquare(observed, expected).pvalue > 1e-3


def test_lookahead_generate_samples_the_tempered_filtered_joint():
    """Sampling through transformers with temperature, top-k and top-p: the joint of three tokens
    against the one computed from the model's raw logits with the test's own filters."""
    import itertools

    from scipy.stats import chisquare

    from conftest import reference_probs

    torch.manual_seed(4)
    config = tf.LlamaConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, pad_token_id=None, eos_token_id=None)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    prompt, n, filters = [1, 3, 0, 1, 3], 3000, dict(temperature=0.7, top_k=4, top_p=0.9)
    joint = {}
    with torch.no_grad():
        for seq in itertools.product(range(5), repeat=3):
            logits = model(torch.tensor([prompt + list(seq)])).logits[0, len(prompt) - 1 : -1]  # (3, V) raw
            probs = reference_probs(logits, **filters)
            joint[seq] = float(probs[0, seq[0]] * probs[1, seq[1]] * probs[2, seq[2]])
    out = model.generate(torch.tensor([prompt] * n), max_new_tokens=3, do_sample=True, **filters,
                         custom_generate=lookahead_generate, generator=torch.Generator().manual_seed(0))
    assert out.shape == (n, len(prompt) + 3) and out[:, : len(prompt)].eq(torch.tensor(prompt)).all()
    samples = [tuple(r) for r in out[:, len(prompt) :].tolist()]
    assert all(joint[s] > 0 for s in samples), "a sequence the filters exclude was sampled"
    cells = [c for c in joint if joint[c] * n >= 5]
    rest = [c for c in joint if 0 < joint[c] * n < 5]
    observed = [samples.count(c) for c in cells] + ([sum(samples.count(c) for c in rest)] if rest else [])
    expected = [joint[c] * n for c in cells] + ([sum(joint[c] for c in rest) * n] if rest else [])
    expected = [e * n / sum(expected) for e in expected]
    assert chisquare(observed, expected).pvalue > 1e-3


def test_hybrid_and_recurrent_caches_are_refused():
    hybrid = tf.Qwen2Config(**SHAPE, **LLAMA_LIKE, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    with pytest.raises(ValueError, match="hybrid, linear-attention and recurrent caches are not supported"):
        jacobix.generate(tf.AutoModelForCausalLM.from_config(hybrid), [[1, 2, 3]], max_new_tokens=4)
    recurrent = tf.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2)
    with pytest.raises(ValueError, match="LinearAttentionLayer"):
        check_supported(tf.AutoModelForCausalLM.from_config(recurrent))


def test_bad_custom_generate_options_are_refused():
    model = build("llama")
    ids = torch.tensor([PROMPTS[0]])
    with pytest.raises(ValueError, match="sjd_generate"):
        model.generate(ids, max_new_tokens=4, do_sample=True, custom_generate=jacobi_generate)
    with pytest.raises(ValueError, match="one eos_token_id"):
        model.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=[3, 4], custom_generate=jacobi_generate)
    with pytest.raises(ValueError, match="window must be"):
        jacobix.generate(model, ids, method="jacobi", window="big")
