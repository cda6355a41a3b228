"""The transformers adapter: greedy equality with transformers' own ``generate`` on tiny random
models of each supported architecture (built from local configs, no hub), batches with left
padding, EOS inside the window, logits processors, SJD's distribution through the HF path,
clear refusals of caches that cannot roll back; the model-protocol seams (``embeds=``,
``return_hidden=``, ``copy_slots``) against transformers' own forward; the GGUF cache swap."""

from __future__ import annotations

import os

import pytest
import torch

tf = pytest.importorskip("transformers", reason="the HF adapter tests need transformers: pip install 'jacobix[hf]'")

import jacobix  # noqa: E402
from jacobix.integrations.hf import (  # noqa: E402
    HFCausalLM,
    check_supported,
    jacobi_generate,
    load_gguf_cached,
    lookahead_generate,
    sjd_generate,
)
from jacobix.integrations.hf import gguf  # noqa: E402

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
    # chunks: the prompt, the token of the prefill pass, then one chunk per pass with several tokens
    assert len(ours.chunks) - 2 == result.stats.forward_passes < len(theirs.chunks) - 2
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


def _toy_sampling_llama():
    """A 5-token Llama whose joint of 3 tokens can be enumerated (sharpened logits)."""
    torch.manual_seed(4)
    config = tf.LlamaConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, pad_token_id=None, eos_token_id=None)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    return model


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
    from test_sjd_distribution import chi_square_pvalue

    model = _toy_sampling_llama()
    prompt, n = [1, 3, 0, 1, 3], 3000
    joint = _exact_joint(model, prompt, 3)
    ids = torch.tensor([prompt] * n)
    out = model.generate(ids, max_new_tokens=3, do_sample=True, temperature=1.0, top_k=None, top_p=None,
                         custom_generate=sjd_generate, window=4, lookahead=lookahead,
                         generator=torch.Generator().manual_seed(7))
    samples = [tuple(r) for r in out[:, len(prompt) :].tolist()]
    assert chi_square_pvalue(samples, joint) > 1e-3


@pytest.mark.slow  # 3,000 sampled rows through the n-gram pool: about 4.5 minutes on a 2-core CPU
def test_lookahead_generate_samples_the_tempered_filtered_joint():
    """Sampling through transformers with temperature, top-k and top-p: the joint of three tokens
    against the one computed from the model's raw logits with the test's own filters."""
    import itertools

    from conftest import reference_probs
    from test_sjd_distribution import chi_square_pvalue

    model = _toy_sampling_llama()
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
    assert chi_square_pvalue(samples, joint) > 1e-3


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
    with pytest.raises(ValueError, match="num_beams=1"):  # (lists of EOS ids work: tests/test_hf_conventions.py)
        model.generate(ids, max_new_tokens=4, do_sample=False, num_beams=2, custom_generate=jacobi_generate)
    with pytest.raises(ValueError, match="window must be"):
        jacobix.generate(model, ids, method="jacobi", window="big")


# --- the model-protocol seams, against transformers' own forward ---------------------------------

ROWS = [[1, 5, 9, 3, 7, 11, 4, 2, 30], [1, 20, 4, 8], [1, 8, 8, 30, 2, 17, 40]]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_adapter_logits_equal_transformers_forward_with_left_padding(arch):
    """Per-row positions through the cache == transformers' left-padded full-sequence forward.

    Each row's prefix goes in first (right-filled with junk past the row's end), then a window of
    each row's last K tokens at that row's own positions; transformers sees the left-padded rows
    with their attention mask and ``position_ids``. A ``position_ids`` off-by-one shows here.
    """
    model, k = build(arch), 3
    ids, mask = left_padded(ROWS)  # (B, L)
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)  # (B, L)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits  # (B, L, V)
    lm, width = HFCausalLM(model), max(map(len, ROWS))
    lengths = torch.tensor([len(r) for r in ROWS])
    prefix = torch.tensor([r[:-k] + [2] * (width - len(r)) for r in ROWS])  # (B, width - K), junk after the row
    cache = lm.new_cache(len(ROWS), width + 1)
    with torch.no_grad():
        first = lm.forward(prefix, torch.arange(prefix.shape[1]).expand_as(prefix), cache)  # (B, width - K, V)
        at = (lengths - k)[:, None] + torch.arange(k)  # (B, K): different positions in every row
        window = torch.tensor([r[-k:] for r in ROWS])  # (B, K)
        last = lm.forward(window, at, cache)  # (B, K, V)
    for b, n in enumerate(lengths.tolist()):
        mine = torch.cat([first[b, : n - k], last[b]])  # (n, V)
        torch.testing.assert_close(mine, reference[b, -n:], atol=1e-10, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_embeds_give_bit_identical_logits(arch):
    lm = HFCausalLM(build(arch))
    ids, _ = left_padded(ROWS)  # (B, L)
    positions = torch.arange(ids.shape[1]).expand_as(ids)  # (B, L)
    window, at = ids[:, 4:8], positions[:, 4:8] + torch.tensor([[0], [2], [5]])  # non-zero, per-row positions
    outputs = []
    for feed in ("tokens", "embeds"):
        cache = lm.new_cache(len(ids), 16)
        with torch.no_grad():
            lm.forward(ids[:, :4], positions[:, :4], cache)
            lm.forward(ids, positions, cache)  # fill every slot the shifted windows can see
            if feed == "tokens":
                outputs.append(lm.forward(window, at, cache))
            else:
                outputs.append(lm.forward(None, at, cache, embeds=lm.embed(window)))
                assert bool((cache.tokens.gather(1, at) == -1).all())  # the documented filler
    assert torch.equal(outputs[0], outputs[1])
    with torch.no_grad():
        assert torch.equal(lm.forward(window, at), lm.forward(None, at, embeds=lm.embed(window)))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral-window6"])
def test_return_hidden_equals_transformers_hidden_states(arch):
    model = build(arch)
    lm = HFCausalLM(model)
    ids = torch.tensor(ROWS[0])[None]  # (1, L)
    positions = torch.arange(ids.shape[1])[None]  # (1, L)
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True)
        for cache in (lm.new_cache(1, ids.shape[1]), None):
            out = lm.forward(ids, positions, cache, return_hidden=True)
            assert len(out.hidden_states) == len(reference.hidden_states) == model.config.num_hidden_layers + 1
            for mine, theirs in zip(out.hidden_states, reference.hidden_states):
                torch.testing.assert_close(mine, theirs, atol=1e-10, rtol=0)
            torch.testing.assert_close(out.logits, reference.logits, atol=1e-10, rtol=0)
            assert torch.equal(out.logits, lm.forward(ids, positions, None if cache is None else lm.new_cache(1, 16)))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_copy_slots_makes_a_row_continue_like_its_source(arch):
    lm = HFCausalLM(build(arch))
    prefixes = torch.tensor([[1, 5, 9, 3, 7], [1, 5, 4, 8, 30]])  # (2, 5), equal in slots 0..1
    positions = torch.arange(5).expand(2, 5)
    step, at = torch.tensor([[11], [11]]), torch.full((2, 1), 5)  # the same next token in both rows

    def next_logits(cache):
        return lm.forward(step, at, cache)[:, 0]  # (2, V)

    with torch.no_grad():
        cache = lm.new_cache(2, 8)
        lm.forward(prefixes, positions, cache)
        before = next_logits(cache)
        assert not torch.allclose(before[0], before[1])  # different prefixes: the test can fail
        cache.copy_slots(torch.tensor([0, 0]), positions)  # row 1 takes row 0's slots
        after = next_logits(cache)
        assert torch.equal(after[1], after[0]) and torch.equal(after[0], before[0])
        cache = lm.new_cache(2, 8)
        lm.forward(prefixes, positions, cache)
        cache.copy_slots(torch.tensor([1]), positions[:1, 2:])  # only row 0, only the slots where rows differ
        after = next_logits(cache)
        assert torch.equal(after[0], after[1]) and torch.equal(after[1], before[1])


# --- GGUF cache: the old folder survives a failed conversion ---------------------------------------

def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


class FailingTokenizer:
    """Fails while the converted folder is being written (after the weights went in)."""

    def save_pretrained(self, folder, *args, **kwargs):
        raise RuntimeError("disk full")


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_gguf_cache_survives_a_failed_conversion_and_is_replaced_whole(tmp_path, monkeypatch):
    gguf_file, cache_dir = tmp_path / "m.gguf", tmp_path / "cache" / "m"
    gguf_file.write_bytes(b"v1")
    old, new = build("llama", seed=0), build("llama", seed=1)
    monkeypatch.setattr(gguf, "_read_gguf", lambda path, dtype: (old, _tiny_tokenizer()))
    loaded, _ = load_gguf_cached(gguf_file, cache_dir, dtype=torch.float64)
    assert torch.equal(loaded.lm_head.weight, old.lm_head.weight)
    before, version = _snapshot(cache_dir), cache_dir.resolve().name
    assert cache_dir.is_symlink() and _entries(cache_dir) == ["m", version]  # the link and the one version it names

    gguf_file.write_bytes(b"v2, longer")  # a different source: the cache is converted again
    monkeypatch.setattr(gguf, "_read_gguf", lambda path, dtype: (new, FailingTokenizer()))
    with pytest.raises(RuntimeError, match="disk full"):
        load_gguf_cached(gguf_file, cache_dir, dtype=torch.float64)
    assert _snapshot(cache_dir) == before and _entries(cache_dir) == ["m", version]

    real_replace = os.replace

    def replace_failing_into_cache(src, dst):
        if os.fspath(dst) == os.fspath(cache_dir) and ".link-" in os.fspath(src):  # the atomic switch
            raise OSError("interrupted")
        return real_replace(src, dst)

    monkeypatch.setattr(gguf, "_read_gguf", lambda path, dtype: (new, _tiny_tokenizer()))
    monkeypatch.setattr(gguf.os, "replace", replace_failing_into_cache)
    with pytest.raises(OSError, match="interrupted"):
        load_gguf_cached(gguf_file, cache_dir, dtype=torch.float64)
    assert _snapshot(cache_dir) == before and _entries(cache_dir) == ["m", version]

    monkeypatch.setattr(gguf.os, "replace", real_replace)
    loaded, tokenizer = load_gguf_cached(gguf_file, cache_dir, dtype=torch.float64)
    assert torch.equal(loaded.lm_head.weight, new.lm_head.weight) and tokenizer.convert_tokens_to_ids("t5") == 5
    assert cache_dir.resolve().name != version and _entries(cache_dir) == ["m", cache_dir.resolve().name]  # old one gone


def _entries(cache_dir):
    """Names beside the cache link, the link first (nothing left over from failed attempts)."""
    return sorted((p.name for p in cache_dir.parent.iterdir()), key=lambda name: (name.startswith("."), name))


def test_narrow_rows_is_a_view_that_writes_through():
    from jacobix.integrations.hf import as_causal_lm

    lm = as_causal_lm(build("llama"))
    cache = lm.new_cache(3, 16)
    tokens = torch.tensor([[1, 5, 9, 3]] * 3)
    positions = torch.arange(4).expand(3, 4)
    lm.forward(tokens, positions, cache)
    view = cache.narrow_rows(2)
    step = lm.forward(torch.tensor([[7], [8]]), torch.tensor([[4], [4]]), view)  # writes slot 4 of rows 0, 1
    assert cache.tokens[:2, 4].tolist() == [7, 8] and cache.tokens[2, 4] == 0
    for layer in cache.layers:
        assert layer.keys[:2, :, 4].abs().sum() > 0 and not layer.keys[2, :, 4].any()  # row 2 untouched
    reference = lm.forward(torch.tensor([[1, 5, 9, 3, 7]]), torch.arange(5)[None], lm.new_cache(1, 16))[:, -1:]
    torch.testing.assert_close(step[:1], reference, rtol=0, atol=1e-10)
