"""The bundled image model: tokenizer, exactness and distribution of decoding, draft rules, pictures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from jacobix.core.sampling import SamplingConfig
from jacobix.tokens.decoding import Decoding

from jacobix.eval.datasets import load_fashion_mnist
from jacobix.tokens.proposers.basic import CopyInit, DraftContext
from jacobix.eval import figures
from jacobix.demos.images import commit_sweeps, fill_in_frames
from jacobix.images.proposers import CodeRandomInit, GridTableInit, resolve_image_init
from jacobix.images.model import load_image_model
from jacobix.images.sample import ImageSampling, generate_images

from conftest import reference_probs


@pytest.fixture(scope="module")
def image_model():
    return load_image_model()


def test_tokenizer_round_trip_shapes_and_quality(image_model):
    images, _ = load_fashion_mnist("test")
    tokens = image_model.tokenizer.encode(images[:64])
    assert tokens.shape == (64, 14, 14) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < image_model.vocab.num_codes
    recon = image_model.tokenizer.decode(tokens)
    assert recon.shape == (64, 28, 28)
    mse = float((recon - torch.tensor(images[:64]).float() / 255).pow(2).mean())
    assert mse < 0.01  # about 0.0023 (PSNR 26 dB) for the bundled tokenizer
    torch.testing.assert_close(image_model.tokenizer.decode(tokens.flatten(1)), recon)


def test_tokenizer_refuses_class_tokens(image_model):
    bad = torch.full((1, 14, 14), image_model.vocab.num_codes)
    with pytest.raises(ValueError, match="strip class tokens"):
        image_model.tokenizer.decode(bad)
    with pytest.raises(ValueError, match=r"\(N, 14, 14\)"):
        image_model.tokenizer.decode(torch.zeros(2, 10, dtype=torch.long))


def test_greedy_jacobi_equals_greedy_ar_with_cfg(image_model):
    labels = torch.tensor([0, 9])
    outs = [
        generate_images(image_model, labels, ImageSampling(decoding=Decoding(method=m, window=w, init=i), sampling=SamplingConfig(), cfg_scale=2.0))
        for m, w, i in (("ar", 1, "random"), ("jacobi", 16, "random"), ("jacobi", 32, "row-above"))
    ]
    torch.testing.assert_close(outs[1].tokens, outs[0].tokens, rtol=0, atol=0)
    torch.testing.assert_close(outs[2].tokens, outs[0].tokens, rtol=0, atol=0)
    assert outs[0].batch_passes == 195 and outs[1].batch_passes < 195  # the prefill pass gives the first token


def _exact_marginals(image_model, label: int, cfg: float, top_k: int, tokens: int, floor: float = 1e-6) -> list[torch.Tensor]:
    """Exact marginals of the first ``tokens`` image tokens under CFG and top-k, by enumerating prefixes.

    Built from the transformer's raw logits (a cache-free forward over each whole prefix) with the
    test's own code masking, guidance and top-k (:func:`conftest.reference_probs`): nothing of
    the library's sampling path is reused.
    """
    num_codes = image_model.vocab.num_codes
    prefixes, weights, marginals = torch.zeros(1, 0, dtype=torch.long), torch.ones(1, dtype=torch.float64), []
    cond = num_codes + label  # the class token
    uncond = num_codes + image_model.vocab.num_classes  # the null token
    for _ in range(tokens):
        n = len(prefixes)
        with torch.no_grad():
            logits_c = image_model.transformer(torch.cat([torch.full((n, 1), cond), prefixes], 1))[:, -1].double()
            logits_u = image_model.transformer(torch.cat([torch.full((n, 1), uncond), prefixes], 1))[:, -1].double()
        guided = logits_u + cfg * (logits_c - logits_u)  # (n, V)
        guided[:, num_codes:] = float("-inf")  # image codes only
        p = reference_probs(guided, temperature=1.0, top_k=top_k)  # (n, V)
        joint = weights[:, None] * p  # (n, V)
        marginals.append(joint.sum(0))
        keep = (joint > floor).nonzero()
        prefixes = torch.cat([prefixes[keep[:, 0]], keep[:, 1:]], 1)
        weights = joint[keep[:, 0], keep[:, 1]]
    return marginals


def _chi_square_pvalue(samples: torch.Tensor, p: torch.Tensor) -> float:
    from scipy.stats import chisquare

    n = len(samples)
    observed = torch.bincount(samples, minlength=len(p)).double()
    common = p * n >= 5
    assert float(observed[p == 0].sum()) == 0, "a token the target cannot produce was sampled"
    f_obs, f_exp = observed[common], p[common]
    if float(p[~common].sum()) > 0:  # pool the rare tokens into one bin
        f_obs, f_exp = torch.cat([f_obs, observed[~common].sum()[None]]), torch.cat([f_exp, p[~common].sum()[None]])
    return float(chisquare(f_obs.numpy(), (f_exp / f_exp.sum() * n).numpy()).pvalue)


@pytest.mark.parametrize("coupled", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_sjd_token_marginals_match_exact_ar_marginals(image_model, coupled):
    """Tokens 1-3 of SJD with CFG (window 6, top-k 8, prior-above drafts) against the enumerated AR marginals."""
    n, label, cfg, top_k = 2000, 8, 3.0, 8
    settings = ImageSampling(decoding=Decoding(method="sjd-coupled" if coupled else "sjd", window=6, init="prior-above"),
                             sampling=SamplingConfig(temperature=1.0, top_k=top_k), cfg_scale=cfg)
    model = image_model
    cond, uncond = model.vocab.prompts(torch.full((n,), label))
    from jacobix.images.sample import _generate_batch

    short = dataclasses.replace(model, vocab=dataclasses.replace(model.vocab, grid=2))  # 4 tokens per "image"
    init = resolve_image_init(settings.decoding.init, model)
    out = _generate_batch(short, torch.full((n,), label), settings, init, torch.Generator().manual_seed(2), False)
    tokens = torch.stack(out.tokens)  # (n, 4)
    for k, p in enumerate(_exact_marginals(model, label, cfg, top_k, 3)):
        assert _chi_square_pvalue(tokens[:, k], p) > 1e-3, f"token {k}"


def _context(canvas: torch.Tensor, start: int, width: int, fresh_from: int, vocab: int) -> DraftContext:
    positions = torch.arange(start, start + width)[None]  # (1, D)
    fresh = torch.arange(width)[None] >= fresh_from
    return DraftContext(canvas, positions, fresh, torch.tensor([1]), vocab, torch.Generator().manual_seed(0))


def test_row_above_init_copies_the_token_above_on_a_hand_built_grid():
    grid, codes = 4, 16
    canvas = torch.zeros(1, 1 + 2 * grid * grid, dtype=torch.long)
    canvas[0, 0] = codes  # class token
    canvas[0, 1 : 1 + 2 * grid] = torch.arange(2 * grid)  # two committed rows: 0..3, 4..7
    # window over cells 8..13 (positions 9..14): two carried drafts, then fresh slots
    canvas[0, 9:11] = torch.tensor([12, 13])
    tokens, p_draft = CopyInit(grid)(_context(canvas, 9, 6, 2, codes + 1))
    assert p_draft is None
    # cells 10, 11 copy cells 6, 7; cells 12, 13 copy cells 8, 9, i.e. the carried drafts 12, 13
    assert tokens[0, 2:].tolist() == [6, 7, 12, 13]


def test_prior_above_init_follows_deterministic_tables():
    grid, codes = 4, 16
    prior = torch.full((2, grid * grid, codes), 1.0 / codes)
    above = torch.eye(codes).roll(1, dims=1) + 1e-9  # the code below c is c + 1 (mod 16)
    init = GridTableInit(prior, above, codes, grid)
    canvas = torch.zeros(1, 1 + grid * grid + 8, dtype=torch.long)
    canvas[0, 0] = codes
    canvas[0, 1 : 1 + grid] = torch.tensor([3, 5, 7, 9])
    tokens, p_draft = init(_context(canvas, 1 + grid, 8, 0, codes + 1))
    assert tokens[0].tolist() == [4, 6, 8, 10, 5, 7, 9, 11]  # second row, then the fresh row below it
    torch.testing.assert_close(p_draft.sum(-1), torch.ones(1, 8))
    assert float(p_draft[..., codes:].sum()) == 0.0


def test_table_init_draws_from_the_distribution_it_reports():
    """Lossless SJD needs each draft to be distributed as its reported p_draft."""
    from scipy.stats import chisquare

    codes, grid, n = 8, 2, 20000
    prior = torch.softmax(torch.randn(2, grid * grid, codes, generator=torch.Generator().manual_seed(0)), -1)
    init = GridTableInit(prior, None, codes, grid)
    canvas = torch.full((n, 1 + grid * grid + 2), 0, dtype=torch.long)
    canvas[:, 0] = codes
    context = DraftContext(canvas, torch.full((n, 1), 2), torch.ones(n, 1, dtype=torch.bool), torch.ones(n, dtype=torch.long),
                           codes + 1, torch.Generator().manual_seed(1))
    tokens, p_draft = init(context)
    torch.testing.assert_close(p_draft[0, 0, :codes], prior[0, 1])
    observed = torch.bincount(tokens[:, 0], minlength=codes).numpy()
    expected = prior[0, 1].double().numpy()
    assert chisquare(observed, expected / expected.sum() * n).pvalue > 1e-3


def test_code_random_init_never_drafts_class_tokens():
    canvas = torch.zeros(2, 30, dtype=torch.long)
    context = DraftContext(canvas, torch.arange(1, 11).expand(2, 10), torch.ones(2, 10, dtype=torch.bool),
                           torch.ones(2, dtype=torch.long), 20, torch.Generator().manual_seed(0))
    tokens, p_draft = CodeRandomInit(16)(context)
    assert int(tokens.max()) < 16
    torch.testing.assert_close(p_draft.sum(-1), torch.ones(2, 10))


def test_bad_inputs_name_the_fix(image_model):
    with pytest.raises(ValueError, match=r"class ids in \[0, 10\)"):
        generate_images(image_model, [10])
    with pytest.raises(ValueError, match="unknown .*init"):
        generate_images(image_model, [1], ImageSampling(decoding=Decoding(init="diagonal")))
    with pytest.raises(ValueError, match="method"):
        ImageSampling(decoding=Decoding(method="beam"))
    with pytest.raises(FileNotFoundError, match="jacobix train image-ar"):
        load_image_model("/nonexistent")


def test_commit_sweeps_from_a_hand_made_trajectory():
    from jacobix.core.engine import SweepRecord

    def record(start, n):
        return SweepRecord(torch.tensor(start), torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor(n) - 1, torch.tensor(n))

    trajectory = [record([1, 1], [2, 4]), record([3, 5], [3, 1]), record([6, 6], [0, 0])]
    sweeps = commit_sweeps(trajectory, prompt_length=1, tokens=5)
    assert sweeps.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]


def test_fill_in_frames_start_after_sweep_one_and_end_with_the_samples(image_model):
    samples = generate_images(image_model, torch.tensor([0, 7, 9]), ImageSampling(decoding=Decoding(method="sjd", window=16, init="prior-above")),
                              generator=torch.Generator().manual_seed(0), batch_size=3, record=True)
    fill = fill_in_frames(image_model, samples, max_frames=1000)
    total = len(samples.trajectories[0])
    assert fill.sweeps == tuple(range(1, total + 1)) and fill.total_sweeps == total
    assert fill.pixels.shape == (total, 3, 28, 28) and fill.status.shape == (total, 3, 14, 14)
    first = fill.status[0]
    assert (first == figures.ACCEPTED).any() and (first == figures.DRAFT).any() and (first == figures.NOT_REACHED).any()
    accepted = (fill.status == figures.ACCEPTED).reshape(total, 3, -1).sum(-1)  # (F, N)
    assert (np.diff(accepted, axis=0) >= 0).all() and (accepted[-1] == 196).all()
    committed = torch.stack([r.start - 1 for r in samples.trajectories[0][1:]]).numpy()  # (F-1, N) tokens before each next sweep
    assert (accepted[:-1] == np.minimum(committed, 196)).all()
    np.testing.assert_allclose(fill.pixels[-1], image_model.tokenizer.decode(samples.tokens).numpy(), atol=1e-6)
    fewer = fill_in_frames(image_model, samples, max_frames=5)
    assert len(fewer.sweeps) == 5 and fewer.sweeps[0] == 1 and fewer.sweeps[-1] == total
