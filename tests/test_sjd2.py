"""SJD2: the noise schedule and DDIM step, the fine-tuning noise sampler, and the lossless decoder.

The decoder's exactness is checked like SJD's (tests/test_sjd_distribution.py): the joint law of
the first tokens of a toy model is enumerated and a chi-square test compares it with samples
decoded with noisy window slots. The paper's lossy variant, which verifies against noisy
contexts, must fail the same test on a toy whose noisy inputs change its predictions a lot.
"""

from __future__ import annotations

import pytest
import torch

from jacobix.tokens.decoding import Decoding

import jacobix
from jacobix.core.sampling import SamplingConfig
from jacobix.images.denoise import NoiseEmbedding, NoiseEmbeddingConfig, NoiseSchedule, add_noise, alpha_sigma, ddim_step
from jacobix.images.sample import ImageSampling
from jacobix.images.sjd2 import SJD2Config, SJD2Proposer, sjd2_proposer
from jacobix.images.model import load_image_model
from jacobix.train.recipes.sjd2 import SJD2TrainConfig, noise_ratios, noisy_inputs, train

from conftest import exact_joint, tiny_model
from test_sjd_distribution import chi_square_pvalue

VOCAB, LENGTH, SAMPLES = 5, 3, 6000
PROMPT = [1, 3, 0]


def noise_module(dim: int, seed: int, scale: float = 0.0) -> NoiseEmbedding:
    """A float64 noise embedding; ``scale`` > 0 gives the timestep MLP random, large output weights."""
    torch.manual_seed(seed)
    noise = NoiseEmbedding(NoiseEmbeddingConfig(dim=dim)).double()
    with torch.no_grad():
        noise.mean.normal_()
        noise.std.uniform_(0.5, 2.0)
        noise.time[2].weight.normal_(std=scale)
    return noise


@pytest.fixture(scope="module")
def toy():
    return tiny_model(11, vocab=VOCAB, dim=16)


def test_level_ratios_rise_from_clean_to_ratio_max():
    schedule = NoiseSchedule(ratio_min=0.05, ratio_max=20.0, rho=7.0)
    ratios = schedule.level_ratios(6)
    assert ratios[0] == 0 and abs(ratios[1] - 0.05) < 1e-12 and abs(ratios[-1] - 20.0) < 1e-9
    assert bool((ratios[1:] > ratios[:-1]).all())
    alpha, sigma = alpha_sigma(ratios)
    assert torch.allclose(alpha ** 2 + sigma ** 2, torch.ones_like(alpha))
    assert torch.equal(schedule.level_ratios(0), torch.zeros(1, dtype=torch.float64))
    assert abs(schedule.level_ratios(1)[1] - 20.0) < 1e-9  # one level: it is the noisiest


def test_ddim_step_to_level_zero_returns_the_clean_embedding_exactly():
    generator = torch.Generator().manual_seed(0)
    noisy, clean = torch.randn(4, 7, 16, generator=generator), torch.randn(4, 7, 16, generator=generator)
    ratio_from = torch.rand(4, 7, generator=generator, dtype=torch.float64) * 30 + 0.01
    assert torch.equal(ddim_step(noisy, clean, ratio_from, torch.zeros(4, 7, dtype=torch.float64)), clean)


def test_ddim_step_matches_the_papers_formula():
    generator = torch.Generator().manual_seed(1)
    noisy, clean = torch.randn(3, 8, dtype=torch.float64, generator=generator), torch.randn(3, 8, dtype=torch.float64, generator=generator)
    r_from, r_to = torch.tensor([5.0, 1.0, 0.3], dtype=torch.float64), torch.tensor([2.0, 0.2, 0.01], dtype=torch.float64)
    a_k, s_k = 1 / (1 + r_from ** 2).sqrt(), r_from / (1 + r_from ** 2).sqrt()
    a_j, s_j = 1 / (1 + r_to ** 2).sqrt(), r_to / (1 + r_to ** 2).sqrt()
    # e_{k-1} = (sigma_{k-1}/sigma_k) e_k + alpha_k (alpha_{k-1}/alpha_k - sigma_{k-1}/sigma_k) e_hat
    expected = (s_j / s_k)[:, None] * noisy + (a_k * (a_j / a_k - s_j / s_k))[:, None] * clean
    assert torch.allclose(ddim_step(noisy, clean, r_from, r_to), expected, atol=1e-12)
    # a step from a forward-noised clean embedding with its own noise lands on the same noise at the lower level
    eps = torch.randn(3, 8, dtype=torch.float64, generator=generator)
    assert torch.allclose(ddim_step(add_noise(clean, eps, r_from), clean, r_from, r_to), add_noise(clean, eps, r_to), atol=1e-12)


def test_fresh_noise_embedding_adds_no_timestep_signal():
    noise = NoiseEmbedding(NoiseEmbeddingConfig(dim=8))
    noise.fit_statistics(torch.randn(50, 8))
    e = torch.randn(2, 3, 8)
    assert torch.equal(noise.inputs(e, torch.full((2, 3), 0.7)), e * noise.std + noise.mean)


def test_noise_ratios_segments_and_shares():
    schedule, generator = NoiseSchedule(), torch.Generator().manual_seed(0)
    assert torch.equal(noise_ratios(4, 50, schedule, SJD2TrainConfig(clean_share=1.0), generator), torch.zeros(4, 50))
    config = SJD2TrainConfig(clean_share=0.0, clean_segment=0.0, monotone=1.0, max_segments=5)
    ratios = noise_ratios(64, 50, schedule, config, generator)
    assert bool((ratios > 0).all()) and bool((ratios <= schedule.ratio_max + 1e-4).all())
    assert bool((ratios[:, 1:] >= ratios[:, :-1]).all())  # monotone: rising along the sequence
    segments = 1 + (ratios[:, 1:] != ratios[:, :-1]).sum(1)
    assert int(segments.max()) <= 5 and int(segments.min()) >= 1 and int(segments.max()) > 1


def sjd2(model, levels: int, *, seed: int, lossy: bool = False, coupled: bool = False, scale: float = 0.0,
         window: int = 4, samples: int = SAMPLES, **kwargs):
    noise = noise_module(model.config.dim, seed=100 + seed, scale=scale)
    proposer = SJD2Proposer(noise, model.embed, SJD2Config(levels=levels, lossy=lossy, coupled=coupled))
    return jacobix.generate(model, [PROMPT] * samples, method="sjd2", proposer=proposer, window=window,
                            generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("coupled", [False, True])
def test_zero_levels_is_exactly_sjd(toy, coupled):
    kwargs = dict(max_new_tokens=12, temperature=1.0, top_k=4, window=5)
    plain = jacobix.generate(toy, [PROMPT] * 16, method="sjd-coupled" if coupled else "sjd",
                             generator=torch.Generator().manual_seed(3), **kwargs)
    ours = sjd2(toy, 0, seed=3, coupled=coupled, samples=16, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(plain.tokens, ours.tokens))
    assert torch.equal(plain.stats.committed_per_pass, ours.stats.committed_per_pass)


def test_noisy_slots_change_the_decoding(toy):
    """The sanity check of the chi-square test below: noisy slots are really fed and stepped."""
    kwargs = dict(max_new_tokens=12, temperature=1.0, samples=16)
    plain, noisy = sjd2(toy, 0, seed=3, **kwargs), sjd2(toy, 3, seed=3, scale=3.0, **kwargs)
    assert not torch.equal(plain.stats.committed_per_pass, noisy.stats.committed_per_pass)
    assert noisy.stats.schedule.drafts_by_source.get("sjd2-lossless", 0) > 0


@pytest.mark.slow
@pytest.mark.parametrize("levels,window,coupled", [(2, 4, False), (3, 5, True), (1, 3, False)])
def test_lossless_sjd2_matches_exact_joint(toy, levels, window, coupled):
    sampling = SamplingConfig(temperature=1.0)
    joint = exact_joint(toy, PROMPT, LENGTH, sampling)
    result = sjd2(toy, levels, seed=levels, window=window, coupled=coupled, scale=3.0, max_new_tokens=LENGTH, temperature=1.0)
    assert chi_square_pvalue([tuple(t.tolist()) for t in result.tokens], joint) > 1e-3


@pytest.mark.slow
def test_lossless_sjd2_with_cfg_matches_exact_guided_joint(toy):
    negative = [2]
    joint = exact_joint(toy, PROMPT, LENGTH, SamplingConfig(temperature=1.0), negative=negative, cfg_scale=2.0)
    result = sjd2(toy, 2, seed=9, scale=3.0, max_new_tokens=LENGTH, temperature=1.0, cfg_scale=2.0,
                  negative_input_ids=[negative] * SAMPLES)
    assert chi_square_pvalue([tuple(t.tolist()) for t in result.tokens], joint) > 1e-3


@pytest.mark.slow
def test_the_chi_square_test_rejects_verifying_against_noisy_contexts(toy):
    joint = exact_joint(toy, PROMPT, LENGTH, SamplingConfig(temperature=1.0))
    result = sjd2(toy, 2, seed=2, lossy=True, scale=3.0, max_new_tokens=LENGTH, temperature=1.0)
    assert result.stats.schedule.drafts_by_source.get("sjd2-lossy", 0) > 0
    assert chi_square_pvalue([tuple(t.tolist()) for t in result.tokens], joint) < 1e-6


def test_bad_inputs_name_the_argument(toy):
    with pytest.raises(ValueError, match="levels"):
        SJD2Config(levels=-1)
    with pytest.raises(ValueError, match="levels"):
        SJD2Config(levels=2.5)
    with pytest.raises(ValueError, match="fine-tuned"):
        sjd2_proposer(None, toy.embed, SJD2Config(levels=3))
    with pytest.raises(ValueError, match="proposer="):
        jacobix.generate(toy, [PROMPT], method="sjd2", temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        sjd2(toy, 2, seed=0, samples=2, max_new_tokens=4, temperature=0.0)
    with pytest.raises(ValueError, match="levels and lossy"):
        ImageSampling(decoding=Decoding(method="sjd"), sjd2=SJD2Config(lossy=True))
    with pytest.raises(ValueError, match="levels"):
        ImageSampling(decoding=Decoding(method="sjd2"), sjd2=SJD2Config(levels=-2))
    with pytest.raises(ValueError, match="ratio_min"):
        NoiseSchedule(ratio_min=2.0, ratio_max=1.0)


def test_noisy_inputs_are_the_token_embeddings_where_clean(toy):
    noise = noise_module(16, seed=0, scale=1.0)
    tokens = torch.randint(VOCAB, (3, 9), generator=torch.Generator().manual_seed(0))
    ratios = torch.zeros(3, 9, dtype=torch.float64)
    ratios[1, 4:] = 2.0
    embeds = noisy_inputs(toy, noise, tokens, ratios, torch.Generator().manual_seed(1))
    clean = ratios == 0
    assert torch.equal(embeds[clean], toy.embed(tokens)[clean])
    assert not torch.allclose(embeds[~clean], toy.embed(tokens)[~clean])


@pytest.mark.slow
def test_the_trainer_writes_a_checkpoint_that_decodes_with_sjd2(tmp_path):
    train(tmp_path / "m", SJD2TrainConfig(steps=2, batch_size=2, warmup=1, save_every=1))
    model = load_image_model(tmp_path / "m")
    assert model.noise is not None and float(model.noise.time[2].weight.detach().abs().sum()) > 0  # the timestep MLP learned
    assert model.meta["train_runs"][-1]["kind"] == "sjd2" and "test_loss" in model.meta
    bundled = load_image_model("fmnist-ar-sjd2")
    assert torch.equal(model.noise.mean, bundled.noise.mean)  # statistics of the same starting model
    from jacobix.images.sample import generate_images

    out = generate_images(model, [3], ImageSampling(decoding=Decoding(method="sjd2", window=16), sjd2=SJD2Config(levels=3)), generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (1, 14, 14) and int(out.row_passes[0]) < 195
