"""generate_image on tiny random Janus and Emu3 models: transformers' own image generation is the reference.

Greedy: the same image tokens, token for token, with guidance, batch 1 and a left-padded batch.
Sampled: at every image-token position SJD and coupled SJD draw from the distribution of
transformers' sampler (two-sample chi-square), and the same test rejects a run that drops the
guidance scale or the image constraint.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from scipy.stats import chi2_contingency  # noqa: E402

from jacobix import Decoding, SamplingConfig  # noqa: E402
from jacobix.integrations.hf import HFCausalLM, generate_image, jacobi_generate  # noqa: E402
from jacobix.integrations.hf.image_families import Emu3ImageGrid, emu3_ids, emu3_prefix_allowed_tokens_fn  # noqa: E402
from jacobix.integrations.hf.tiny_images import tiny_emu3, tiny_emu3_prompts, tiny_janus, tiny_janus_prompts  # noqa: E402
from jacobix.tokens.decoding import Guidance  # noqa: E402
from jacobix.tokens.generate import generate  # noqa: E402

GREEDY = [Decoding(method="ar"), Decoding(method="jacobi", window=4), Decoding(method="jacobi", window=16, init="row-above")]
SCALE, HEIGHT, WIDTH, SAMPLES = 3.0, 3, 4, 1200


@pytest.fixture(scope="module")
def janus():
    return tiny_janus()


@pytest.fixture(scope="module")
def emu3():
    return tiny_emu3()


def _janus_reference(model, inputs, **sampling):
    return model.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], generation_mode="image",
                          guidance_scale=SCALE, **sampling)


def _emu3_reference(model, inputs, negative, height, width, **options):
    fn = emu3_prefix_allowed_tokens_fn(model, height, width)
    out = model.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], prefix_allowed_tokens_fn=fn,
                         negative_prompt_ids=negative, guidance_scale=SCALE, max_new_tokens=(width + 1) * height + 3,
                         **options)
    return out[:, inputs["input_ids"].shape[1]:]


@pytest.mark.parametrize("words", [[[1, 2, 3]], [[1, 2, 3], [4]]], ids=["batch1", "left-padded"])
def test_janus_greedy_equals_transformers(janus, words):
    inputs = tiny_janus_prompts(words)
    reference = _janus_reference(janus, inputs, do_sample=False)
    assert len(set(reference.flatten().tolist())) > 1  # not a constant image
    for decoding in GREEDY:
        out = generate_image(janus, inputs, decoding=decoding, guidance_scale=SCALE)
        assert torch.equal(out.sequences, reference), decoding
        assert out.image_tokens.shape == (len(words), 4, 4) and out.pixels is not None
    assert out.forward_passes <= 16 + 1


@pytest.mark.parametrize("words", [[[1, 2, 3]], [[1, 2, 3], [4]]], ids=["batch1", "left-padded"])
def test_emu3_greedy_equals_transformers(emu3, words):
    inputs = tiny_emu3_prompts(words, HEIGHT, WIDTH)
    negative = torch.tensor([[1, 20, 4]] * len(words))
    reference = _emu3_reference(emu3, inputs, negative, HEIGHT, WIDTH, do_sample=False)
    for decoding in GREEDY:
        out = generate_image(emu3, inputs, decoding=decoding, guidance_scale=SCALE, negative_input_ids=negative)
        assert torch.equal(out.sequences, reference), decoding
        assert out.image_tokens.shape == (len(words), HEIGHT, WIDTH) and out.pixels is not None
    via_generate = emu3.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], guidance_scale=SCALE,
                                 prefix_allowed_tokens_fn=emu3_prefix_allowed_tokens_fn(emu3, HEIGHT, WIDTH),
                                 negative_prompt_ids=negative, max_new_tokens=100, custom_generate=jacobi_generate,
                                 window=4)
    assert torch.equal(via_generate[:, inputs["input_ids"].shape[1]:], reference)


def test_emu3_grid_is_transformers_prefix_constraint(emu3):
    from transformers.generation import PrefixConstrainedLogitsProcessor

    inputs = tiny_emu3_prompts([[1, 2], [5]], HEIGHT, WIDTH)
    ids = emu3_ids(emu3)
    visual = torch.zeros(emu3.config.text_config.vocab_size, dtype=torch.bool)
    visual[emu3.vocabulary_mapping.image_tokens] = True
    grid = Emu3ImageGrid(HEIGHT, WIDTH, torch.tensor([1, 1]), visual, ids)
    hf = PrefixConstrainedLogitsProcessor(emu3_prefix_allowed_tokens_fn(emu3, HEIGHT, WIDTH), num_beams=1)
    steps = (WIDTH + 1) * HEIGHT + 6
    logits = torch.randn(2, steps, visual.shape[0])
    ours = grid(logits, torch.arange(steps).expand(2, steps))  # (2, steps, V)
    for t in range(steps):
        history = torch.cat([inputs["input_ids"], torch.zeros(2, t, dtype=torch.long)], 1)  # left-padded, as transformers
        assert torch.equal(ours[:, t], hf(history, logits[:, t].clone())), t


def _p_values(reference, sample, vocab):
    """Two-sample chi-square p-value at every position of (N, T) token samples."""
    out = []
    for j in range(reference.shape[1]):
        table = torch.stack([torch.bincount(reference[:, j], minlength=vocab), torch.bincount(sample[:, j], minlength=vocab)])
        table = table[:, table.sum(0) > 0]
        out.append(1.0 if table.shape[1] < 2 else float(chi2_contingency(table.numpy())[1]))
    return out


def _sampled(model, inputs, method, scale, init="random", **extra):
    out = generate_image(model, inputs, decoding=Decoding(method=method, window=4, init=init), guidance_scale=scale,
                         sampling=SamplingConfig(temperature=1.0), generator=torch.Generator().manual_seed(7),
                         decode_pixels=False, **extra)
    return out.sequences


def test_janus_sjd_samples_as_transformers():
    model = tiny_janus(codes=4, side=2)
    inputs = tiny_janus_prompts([[1, 2, 3]] * SAMPLES)
    torch.manual_seed(1)
    reference = _janus_reference(model, inputs, do_sample=True)
    for method, init in (("sjd", "random"), ("sjd-coupled", "random"), ("sjd-coupled", "row-above")):
        assert min(_p_values(reference, _sampled(model, inputs, method, SCALE, init), 4)) > 1e-3, (method, init)
    assert min(_p_values(reference, _sampled(model, inputs, "sjd", 1.0), 4)) < 1e-6  # guidance dropped


def test_emu3_sjd_samples_as_transformers():
    model, height, width = tiny_emu3(codes=6), 1, 3
    inputs = tiny_emu3_prompts([[1, 2]] * SAMPLES, height, width, codes=6)
    negative = torch.tensor([[1, 20, 4]] * SAMPLES)
    vocab = model.config.text_config.vocab_size
    torch.manual_seed(1)
    reference = _emu3_reference(model, inputs, negative, height, width, do_sample=True, top_k=4)
    sampling = SamplingConfig(temperature=1.0, top_k=4)
    for method in ("sjd", "sjd-coupled"):
        out = generate_image(model, inputs, decoding=Decoding(method=method, window=4), sampling=sampling,
                             guidance_scale=SCALE, negative_input_ids=negative, generator=torch.Generator().manual_seed(7),
                             decode_pixels=False)
        assert min(_p_values(reference, out.sequences, vocab)) > 1e-3, method
    dropped = generate_image(model, inputs, decoding=Decoding(method="sjd", window=4), sampling=sampling,
                             guidance_scale=1.0, generator=torch.Generator().manual_seed(7), decode_pixels=False)
    assert min(_p_values(reference, dropped.sequences, vocab)) < 1e-6  # guidance dropped
    prompts = [row[mask.bool()] for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    unconstrained = generate(HFCausalLM(model), prompts, Decoding(method="sjd", window=4), sampling,
                             max_new_tokens=reference.shape[1], guidance=Guidance(scale=SCALE, negative_input_ids=negative),
                             generator=torch.Generator().manual_seed(7))
    assert min(_p_values(reference, torch.stack(unconstrained.tokens), vocab)) < 1e-6  # image constraint dropped


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_bad_guidance_scale_is_refused(janus, scale):
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        generate_image(janus, tiny_janus_prompts([[1]]), guidance_scale=scale)


def test_unsupported_models_are_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    text = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="text-only model.*JanusForConditionalGeneration, Emu3ForConditionalGeneration"):
        generate_image(text, torch.tensor([[1, 2]]))
    other = type("ChameleonForConditionalGeneration", (), {"output_modalities": ("image", "text")})()
    with pytest.raises(ValueError, match="not supported by generate_image; supported: JanusForConditionalGeneration"):
        generate_image(other, torch.tensor([[1, 2]]))


def test_bad_prompts_and_grids_are_refused(janus, emu3):
    with pytest.raises(ValueError, match="does not end with Janus's image-start token"):
        generate_image(janus, torch.tensor([[1, 10, 11]]))
    with pytest.raises(ValueError, match="no image marker"):
        generate_image(emu3, torch.tensor([[1, 20, 21]]))
    with pytest.raises(ValueError, match="does not fit the context.*max_position_embeddings=16"):
        generate_image(tiny_janus(context=16), tiny_janus_prompts([[1, 2]]))
    with pytest.raises(ValueError, match="does not fit the context"):
        generate_image(emu3, tiny_emu3_prompts([[1]], 30, 30))
    right = tiny_janus_prompts([[1, 2, 3], [4]])
    right = {k: v.flip(1) for k, v in right.items()}
    with pytest.raises(ValueError, match="pad on the left"):
        generate_image(janus, right)
    with pytest.raises(ValueError, match="decoding.init='prior-above'"):
        generate_image(janus, tiny_janus_prompts([[1]]), decoding=Decoding(method="jacobi", init="prior-above"))
    with pytest.raises(ValueError, match="image size is neither"):
        generate_image(emu3, {"input_ids": torch.tensor([[1, 4, 5]])})


def test_bench_images_hf_cli(tmp_path, capsys):
    import json

    from jacobix.cli.main import main

    path = tmp_path / "hf.json"
    assert main(["bench", "images", "--hf", "emu3", "--quick", "--images", "1", "--json", str(path)]) == 0
    records = json.loads(path.read_text())
    assert [r["setting"] for r in records][:2] == ["transformers", "ar"]
    assert all(r["same_as_transformers"] for r in records if r["same_as_transformers"] is not None)
    assert "calls/image" in capsys.readouterr().out
