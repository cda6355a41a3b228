"""transformers' conventions under ``custom_generate`` and ``jacobix.generate(hf_model)``, each against
transformers' own ``generate`` on tiny random models: guidance (``guidance_scale``,
``negative_prompt_ids``), lists of EOS ids, the model's own EOS, streaming through
``jacobix_streamer=``, ``return_dict_in_generate``."""

from __future__ import annotations

import os

import pytest
import torch

tf = pytest.importorskip("transformers", reason="the HF adapter tests need transformers: pip install 'jacobix[hf]'")

import jacobix  # noqa: E402
from jacobix.integrations.hf import jacobi_generate, lookahead_generate, sjd_generate  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB, PAD = 48, 0


def build(seed: int = 0, *, eos=None):
    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=1, eos_token_id=eos, hidden_size=32,
                            intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=256)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    with torch.no_grad():  # sharper logits: varied but deterministic greedy text
        model.get_output_embeddings().weight.mul_(6.0)
    return model


def left_padded(rows):
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


PROMPTS = [[1, 5, 9, 3, 7, 11], [1, 20, 4], [1, 8, 8, 30, 2, 17, 40, 6, 9]]


@pytest.mark.parametrize("window", [1, 5, "auto"])
def test_guidance_scale_equals_transformers_guided_greedy(window):
    model = build(1)
    ids, mask = left_padded(PROMPTS)
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
    reference = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, guidance_scale=3.0)
    assert not torch.equal(plain, reference)  # guidance changes this text, so equality below means something
    out = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, guidance_scale=3.0,
                         custom_generate=jacobi_generate, window=window)
    assert torch.equal(out, reference)


def test_negative_prompt_ids_equal_transformers():
    model = build(2)
    ids = torch.tensor([PROMPTS[0], [1, 3, 3, 12, 9, 40]])
    negative = torch.tensor([[1, 2, 44], [1, 7, 7]])
    reference = model.generate(ids, max_new_tokens=20, do_sample=False, guidance_scale=2.5, negative_prompt_ids=negative)
    default = model.generate(ids, max_new_tokens=20, do_sample=False, guidance_scale=2.5)
    assert not torch.equal(reference, default)
    for generate in (jacobi_generate, lookahead_generate):
        out = model.generate(ids, max_new_tokens=20, do_sample=False, guidance_scale=2.5, negative_prompt_ids=negative,
                             custom_generate=generate, window=4)
        assert torch.equal(out, reference), generate.__name__


def test_guidance_with_other_processors_or_padded_negatives_is_refused():
    model = build(2)
    ids = torch.tensor([PROMPTS[0]])
    with pytest.raises(ValueError, match="guidance_scale together with other logits processors"):
        model.generate(ids, max_new_tokens=4, do_sample=False, guidance_scale=2.0, repetition_penalty=1.3,
                       custom_generate=jacobi_generate)
    with pytest.raises(ValueError, match="padded negative_prompt_attention_mask"):
        model.generate(ids, max_new_tokens=4, do_sample=False, guidance_scale=2.0,
                       negative_prompt_ids=torch.tensor([[0, 1, 2]]), negative_prompt_attention_mask=torch.tensor([[0, 1, 1]]),
                       custom_generate=jacobi_generate)


def two_eos_ids(model, ids, mask):
    """Two distinct tokens of the unstopped greedy text (the 6th and 10th new tokens' values)."""
    free = model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False)[:, ids.shape[1]:]  # (B, 24)
    values = [int(t) for t in free[0] if int(t) != PAD]
    first = values[5]
    second = next(v for v in values[9:] + list(range(2, VOCAB)) if v != first)
    return [first, second]


def test_a_list_of_eos_ids_stops_where_transformers_stops():
    model = build(3)
    ids, mask = left_padded(PROMPTS)
    eos = two_eos_ids(model, ids, mask)
    reference = model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=eos)
    assert reference.shape[1] < ids.shape[1] + 24  # every row stopped early
    for options in (dict(window=6), dict(window="auto", lookahead=True)):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=eos,
                             custom_generate=jacobi_generate, **options)
        assert torch.equal(out, reference), options


def test_jacobix_generate_stops_at_the_models_own_eos():
    model = build(3)
    ids, mask = left_padded(PROMPTS)
    eos = two_eos_ids(model, ids, mask)
    model.generation_config.eos_token_id = eos
    reference = model.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=24, do_sample=False)  # stops at eos
    new = reference[0, ids.shape[1]:]
    assert len(new) < 24 and int(new[-1]) in eos
    for method in ("ar", "jacobi"):
        result = jacobix.generate(model, [PROMPTS[0]], method=method, window=6, max_new_tokens=24)
        assert torch.equal(result.tokens[0], new), method
    unstopped = jacobix.generate(model, [PROMPTS[0]], method="jacobi", max_new_tokens=24, eos_token_id=None)
    assert len(unstopped.tokens[0]) == 24
    model.generation_config.eos_token_id = eos[0]  # one id, not a list
    single = model.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=24, do_sample=False)[0, ids.shape[1]:]
    assert torch.equal(jacobix.generate(model, [PROMPTS[0]], max_new_tokens=24).tokens[0], single)


class Recorder:
    """A transformers-style streamer that keeps what it is given."""

    def __init__(self):
        self.chunks, self.ended = [], 0

    def put(self, value):
        self.chunks.append(torch.as_tensor(value).reshape(-1).clone())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("generate", [jacobi_generate, lookahead_generate])
def test_jacobix_streamer_streams_through_custom_generate(generate):
    model = build(4)
    ids = torch.tensor([PROMPTS[2]])
    recorder = Recorder()
    out = model.generate(ids, max_new_tokens=20, do_sample=False, custom_generate=generate, jacobix_streamer=recorder)
    assert torch.equal(out, model.generate(ids, max_new_tokens=20, do_sample=False))
    assert torch.equal(torch.cat(recorder.chunks), out[0]) and recorder.ended == 1
    assert torch.equal(recorder.chunks[0], ids[0])  # the prompt first, as transformers' streamers expect


def test_jacobix_streamer_with_sampling_and_a_batch():
    model = build(4)
    recorder = Recorder()
    ids = torch.tensor([PROMPTS[0]])
    out = model.generate(ids, max_new_tokens=12, do_sample=True, custom_generate=sjd_generate, jacobix_streamer=recorder,
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat(recorder.chunks), out[0])
    ids, mask = left_padded(PROMPTS)
    with pytest.raises(ValueError, match="jacobix_streamer follows one prompt"):
        model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, custom_generate=jacobi_generate,
                       jacobix_streamer=Recorder())


def test_return_dict_in_generate_gives_sequences():
    model = build(5)
    ids, mask = left_padded(PROMPTS)
    reference = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, return_dict_in_generate=True)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, return_dict_in_generate=True,
                         custom_generate=jacobi_generate, window=4)
    assert isinstance(out, tf.generation.GenerateDecoderOnlyOutput)
    assert torch.equal(out.sequences, reference.sequences) and out.scores is None
    with pytest.raises(ValueError, match="does not return output_scores"):
        model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                       output_scores=True, custom_generate=jacobi_generate)
