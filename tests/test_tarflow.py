"""TarFlow: model, checkpoints, and the engine samplers against an independent reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jacobix.core.acceptance import relative_residual
from jacobix.eval.datasets import load_images
from jacobix.flows.checkpoint import load_checked, load_tarflow, save_tarflow
from jacobix.flows.sampling import (
    BlockPlan,
    FlowGuidance,
    sample_tarflow,
    uniform_schedule,
)
from jacobix.flows.tarflow import TarFlow, TarFlowConfig, denoise


DIGITS = Path(__file__).resolve().parent.parent / "src" / "jacobix" / "assets" / "tarflow-digits"
SEQUENTIAL = BlockPlan(mode="sequential")


def random_flow(num_classes: int = 3, seed: int = 0) -> TarFlow:
    """A float64 TarFlow with non-zero output layers (the zero init would make every block the identity)."""
    torch.manual_seed(seed)
    config = TarFlowConfig(img_size=8, patch_size=2, channels=32, head_dim=16, num_blocks=3, layers_per_block=2, num_classes=num_classes)
    model = TarFlow(config).double().eval()
    with torch.no_grad():
        for block in model.blocks:
            block.proj_out.weight.normal_(std=0.05)
    return model


def reference_affine(block, x: torch.Tensor, labels, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's raw (a, b) over x (B, t, F) in its own order, written out with explicit softmax
    attention (ml-tarflow's ``forward_base``): logits ``q.k / sqrt(head_dim) / temperature``."""
    t = x.shape[1]
    h = block.proj_in(x) + block.permute(block.pos_embed[None])[0, :t]  # (B, t, C)
    if block.class_embed is not None:
        mean = block.class_embed.mean(0)  # (1, C)
        h = h + (mean if labels is None else torch.where((labels < 0)[:, None, None], mean, block.class_embed[labels.clamp_min(0)]))
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for layer in block.attn_blocks:
        attention = layer.attention
        heads, size = attention.num_heads, attention.head_dim
        q, k, v = attention.qkv(attention.norm(h)).view(h.shape[0], t, 3, heads, size).unbind(2)  # (B, t, H, hd) each
        logits = torch.einsum("bmhd,bnhd->bhmn", q, k) / size**0.5 / temperature  # (B, H, t, t)
        weights = logits.masked_fill(~causal, float("-inf")).softmax(-1)
        h = h + attention.proj(torch.einsum("bhmn,bnhd->bmhd", weights, v).reshape(h.shape))
        h = h + layer.mlp(h)
    return block.proj_out(h).chunk(2, dim=-1)


@torch.no_grad()
def naive_inverse(model: TarFlow, z: torch.Tensor, labels, guidance: float = 0.0, *, annealed: bool = False,
                  temperature: float = 1.0, guide: str = "ab") -> torch.Tensor:
    """Reference sampler: no cache, no engine; recompute each block's whole prefix per position.
    Guidance as in ml-tarflow's ``MetaBlock.reverse``: weight ``(i + 1) / (T - 1) * w`` (Python
    floats) when annealed; the unconditional pass has label -1 (or none) and the temperature."""
    x = z.clone()
    num_patches = x.shape[1]
    uncond = None if labels is None else torch.full_like(labels, -1)
    for block in reversed(model.blocks):
        x = block.permute(x)
        out = x.clone()
        for t in range(1, num_patches):
            a, b = reference_affine(block, out[:, :t], labels)
            if guidance:
                a_u, b_u = reference_affine(block, out[:, :t], uncond, temperature)
                w = t / (num_patches - 1) * guidance if annealed else guidance
                a = a + w * (a - a_u) if "a" in guide else a
                b = b + w * (b - b_u) if "b" in guide else b
            out[:, t] = x[:, t] * torch.exp(a[:, -1]) + b[:, -1]
        x = block.permute(out)
    return model.unpatchify(x)


def test_inverse_of_forward_is_identity():
    model = random_flow()
    images = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1
    labels = torch.tensor([0, 2, -1, 1])
    z, outputs, logdet = model(images, labels)
    assert z.shape == (4, 16, 4) and len(outputs) == 3 and logdet.shape == (4,)
    for plan in (SEQUENTIAL, BlockPlan(mode="jacobi"), BlockPlan(mode="gs", segments=4, tolerance=0.0)):
        back = sample_tarflow(model, z, labels, schedule=uniform_schedule(3, plan), denoise_step=False).raw
        torch.testing.assert_close(back, images, rtol=0, atol=1e-10)


def test_sequential_engine_matches_naive_reference_with_guidance():
    model = random_flow()
    z = torch.randn(3, 16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2])
    reference = naive_inverse(model, z, labels, guidance=1.5)
    got = sample_tarflow(model, z, labels, schedule=uniform_schedule(3, SEQUENTIAL), guidance=FlowGuidance(scale=1.5), denoise_step=False)
    torch.testing.assert_close(got.raw, reference, rtol=0, atol=1e-12)
    assert got.forward_passes == 3 * 15  # one pass per position after x_0, per block


@pytest.mark.parametrize("guidance", [None, FlowGuidance(scale=2.0, annealed=True), FlowGuidance(scale=1.0, attention_temperature=0.7, guide="b")])
def test_exact_jacobi_equals_sequential_to_float64_precision(guidance):
    """tolerance_accept with rtol = atol = 0: Jacobi commits only exact values.

    Stated tolerance: 1e-12 absolute in float64. Bitwise equality is not promised: a window of W
    queries and a single query reduce in different orders inside the attention kernels.
    """
    model = random_flow()
    z = torch.randn(5, 16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0, 1])
    sequential = sample_tarflow(model, z, labels, schedule=uniform_schedule(3, SEQUENTIAL), guidance=guidance, denoise_step=False)
    jacobi = sample_tarflow(model, z, labels, schedule=uniform_schedule(3, BlockPlan(mode="jacobi")), guidance=guidance, denoise_step=False)
    torch.testing.assert_close(jacobi.raw, sequential.raw, rtol=0, atol=1e-12)
    assert jacobi.forward_passes <= sequential.forward_passes


@torch.no_grad()
def test_attention_temperature_one_is_bit_identical_and_others_match_explicit_attention():
    model = random_flow()
    block = model.blocks[1]
    x = torch.randn(2, 16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([2, -1])
    ones = torch.ones(2, dtype=torch.float64)
    for got, default in zip(block.affine(x, labels, temperature=ones), block.affine(x, labels)):
        assert torch.equal(got, default)  # no cache
    positions = torch.arange(16).expand(2, 16)
    cached = [block.affine(x, labels, positions, block.new_cache(2, 16), temperature=t) for t in (None, ones)]
    for got, default in zip(cached[1], cached[0]):
        assert torch.equal(got, default)  # through the KV cache
    temperature = torch.tensor([1.0, 0.5], dtype=torch.float64)  # per row
    a, b = block.affine(x, labels, temperature=temperature)
    for row, temp in enumerate((1.0, 0.5)):
        a_ref, b_ref = reference_affine(block, x[row : row + 1], labels[row : row + 1], temp)
        torch.testing.assert_close(a[row : row + 1], a_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(b[row : row + 1], b_ref, rtol=0, atol=1e-12)
    assert float((a[1] - cached[0][0][1]).abs().max()) > 1e-4  # a temperature changes the output


@pytest.mark.parametrize(
    ("num_classes", "labels", "guidance"),
    [
        (3, [0, 1, 2], FlowGuidance(scale=2.0, annealed=True)),  # weight in float64, as the reference
        (3, [0, 1, 2], FlowGuidance(scale=1.5, guide="a")),
        (3, [0, 1, 2], FlowGuidance(scale=1.5, guide="b")),
        (3, [0, -1, 2], FlowGuidance(scale=1.0, attention_temperature=0.5, annealed=True)),
        (3, None, FlowGuidance(scale=1.0, attention_temperature=1.5)),  # mean class, temperature only
        (0, None, FlowGuidance(scale=1.5, attention_temperature=0.5)),  # ml-tarflow's unconditional guidance
    ],
)
def test_guidance_options_match_the_ml_tarflow_reference(num_classes, labels, guidance):
    model = random_flow(num_classes=num_classes)
    labels = None if labels is None else torch.tensor(labels)
    z = torch.randn(3, 16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    reference = naive_inverse(model, z, labels, guidance.scale, annealed=guidance.annealed,
                              temperature=guidance.attention_temperature, guide=guidance.guide)
    schedule = uniform_schedule(3, SEQUENTIAL)
    got = sample_tarflow(model, z, labels, schedule=schedule, guidance=guidance, denoise_step=False)
    torch.testing.assert_close(got.raw, reference, rtol=0, atol=1e-12)
    unguided = sample_tarflow(model, z, labels, schedule=schedule, denoise_step=False)
    assert float((got.raw - unguided.raw).abs().max()) > 1e-4  # the option does something


def test_denoise_step_scale_default_is_bit_identical_and_scales_the_step():
    model = random_flow()
    images = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7)) * 2 - 1
    labels = torch.tensor([1, -1])
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.loss(x, labels) * x.numel(), [x])
    tweedie = (images - model.config.noise_std**2 * grad).detach()
    assert torch.equal(denoise(model, images, labels), tweedie)
    assert torch.equal(denoise(model, images, labels, step_scale=0.0), images)
    torch.testing.assert_close(denoise(model, images, labels, step_scale=2.5) - images, 2.5 * (tweedie - images), rtol=1e-12, atol=0)
    z = torch.randn(2, 16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    sample = sample_tarflow(model, z, labels, schedule=uniform_schedule(3, SEQUENTIAL))
    assert torch.equal(sample.images, denoise(model, sample.raw, labels))
    half = sample_tarflow(model, z, labels, schedule=uniform_schedule(3, SEQUENTIAL), denoise_scale=0.5)
    torch.testing.assert_close(half.images, denoise(model, half.raw, labels, step_scale=0.5), rtol=0, atol=0)
    with pytest.raises(ValueError, match="step_scale must be finite and >= 0"):
        sample_tarflow(model, z, labels, schedule=uniform_schedule(3, SEQUENTIAL), denoise_scale=-1.0)


def test_gs_jacobi_with_full_cap_and_zero_tolerance_is_exact():
    model = random_flow(num_classes=0)
    z = torch.randn(3, 16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    reference = naive_inverse(model, z, None)
    for segments, init in ((1, "z"), (3, "zeros"), (15, "z")):
        plan = BlockPlan(mode="gs", segments=segments, tolerance=0.0, init=init)
        got = sample_tarflow(model, z, None, schedule=uniform_schedule(3, plan), denoise_step=False)
        torch.testing.assert_close(got.raw, reference, rtol=0, atol=1e-11)


def test_loose_tolerance_is_fewer_passes_and_a_cap_is_respected():
    model = random_flow(num_classes=0)
    z = torch.randn(4, 16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    capped = BlockPlan(mode="gs", segments=1, max_sweeps=2, tolerance=0.0)
    got = sample_tarflow(model, z, None, schedule=uniform_schedule(3, capped), denoise_step=False)
    assert [s.forward_passes for s in got.stats] == [2, 2, 2]
    exact = naive_inverse(model, z, None)
    assert float((got.raw - exact).abs().max()) > 1e-6  # two sweeps cannot solve 15 positions


def test_masked_relative_residual_counts_only_valid_positions():
    g = torch.Generator().manual_seed(0)
    guesses, outputs = torch.randn(3, 5, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    valid = torch.ones(3, 5, dtype=torch.bool)
    assert torch.equal(relative_residual(guesses, outputs, valid), relative_residual(guesses, outputs))
    valid[:, 3:] = False  # only the first 3 guesses count
    expected = relative_residual(guesses[:, :3], outputs[:, :4])
    torch.testing.assert_close(relative_residual(guesses, outputs, valid), expected)
    assert relative_residual(guesses, outputs, torch.zeros_like(valid)).eq(0).all()


def test_bad_inputs_are_refused_with_clear_messages():
    model = random_flow()
    z = torch.randn(2, 16, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="one plan per block"):
        sample_tarflow(model, z, torch.tensor([0, 1]), schedule=uniform_schedule(2, SEQUENTIAL))
    with pytest.raises(ValueError, match="noise must be"):
        sample_tarflow(model, z[:, :5], torch.tensor([0, 1]), schedule=uniform_schedule(3, SEQUENTIAL))
    with pytest.raises(ValueError, match="guidance needs labels"):
        sample_tarflow(model, z, None, schedule=uniform_schedule(3, SEQUENTIAL), guidance=FlowGuidance(scale=1.0))
    with pytest.raises(ValueError, match="mode must be"):
        BlockPlan(mode="fast")
    with pytest.raises(ValueError, match="classifier-free guidance needs a class-conditional model"):
        sample_tarflow(random_flow(num_classes=0), z, None, schedule=uniform_schedule(3, SEQUENTIAL), guidance=FlowGuidance(scale=1.0))
    with pytest.raises(ValueError, match="attention_temperature must be finite and > 0"):
        FlowGuidance(scale=1.0, attention_temperature=0.0)
    with pytest.raises(ValueError, match="guide must be one of"):
        FlowGuidance(scale=1.0, guide="ba")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        TarFlowConfig(img_size=28, patch_size=5)
    with pytest.raises(ValueError, match="unconditional"):
        random_flow(num_classes=0)(torch.zeros(1, 1, 8, 8, dtype=torch.float64), torch.tensor([1]))


def test_denoising_step_moves_noisy_images_toward_the_data(tmp_path):
    model, _ = load_tarflow(DIGITS)
    clean = load_images("digits")[0][:64]
    noisy = clean + model.config.noise_std * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    denoised = denoise(model, noisy, None)
    assert F.mse_loss(denoised, clean) < F.mse_loss(noisy, clean)


def test_checkpoint_round_trip_and_wrong_config_is_refused(tmp_path):
    model = random_flow()
    save_tarflow(model, tmp_path / "ckpt")
    loaded, meta = load_tarflow(tmp_path / "ckpt")
    assert meta["architecture"] == "tarflow" and loaded.config == model.config
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key].double(), value)
    wrong = TarFlowConfig(**{**meta["config"], "channels": 64})
    with pytest.raises(ValueError, match="different TarFlowConfig.*channels"):
        load_tarflow(tmp_path / "ckpt", wrong)
    with pytest.raises(ValueError, match="does not match TarFlowConfig.*wrong shapes.*proj_in"):
        load_checked(TarFlow(wrong), model.state_dict(), source="test")
    fewer_blocks = TarFlowConfig(**{**meta["config"], "num_blocks": 2})
    with pytest.raises(ValueError, match="unexpected \\['blocks.2"):
        load_checked(TarFlow(fewer_blocks), model.state_dict(), source="test")


def test_tarflow_demo_grids_name_the_classes_and_the_sampler(tmp_path, monkeypatch):
    import jacobix.demos.tarflow as demo
    from jacobix.eval import figures

    saved, save = {}, figures.save
    monkeypatch.setattr(figures, "save", lambda figure, path: saved.setdefault(path.name, figure) and save(figure, path))
    result = demo.demo_tarflow(tmp_path, num_samples=10)
    assert set(saved) == {"samples_sequential.png", "samples_gs_jacobi.png", "convergence.png"}
    assert all(path.exists() for path in result.paths)
    for name, sampler in (("samples_sequential.png", "sequential"), ("samples_gs_jacobi.png", "GS-Jacobi")):
        (axes,) = saved[name].axes
        assert sampler in axes.get_title() and "passes" in axes.get_title() and axes.get_xlabel() == "class"
        assert [t.get_text() for t in axes.get_xticklabels()] == list(figures.CLASS_NAMES)
    assert len(saved["convergence.png"].axes[0].get_legend().get_texts()) == result.residuals.shape[0]


def test_convergence_plot_has_one_labelled_line_per_block(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import jacobix.demos.tarflow as demo
    from jacobix.eval import figures

    saved, save = [], figures.save
    monkeypatch.setattr(figures, "save", lambda figure, path: saved.append(figure) or save(figure, path))
    residuals = torch.tensor([[1.0, 1e-3, 1e-6], [1.0, 1e-1, 1e-2], [0.5, 1e-2, 0.0]], dtype=torch.float64)
    path = demo.plot_convergence(tmp_path / "curves.png", residuals)
    (axes,) = saved[0].axes
    assert axes.get_yscale() == "log" and axes.get_xlabel() == "Jacobi sweep" and "residual" in axes.get_ylabel()
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend == ["block 0, inverted 3rd", "block 1, inverted 2nd", "block 2, inverted 1st"]
    np.testing.assert_allclose(axes.get_lines()[1].get_ydata(), residuals[1].numpy())
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
        assert np.asarray(image.convert("L")).std() > 10
