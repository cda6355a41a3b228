"""TarFlow: model, checkpoints, and the engine samplers against an independent reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jacobix.core.acceptance import relative_residual
from jacobix.flows.checkpoint import load_checked, load_tarflow, save_tarflow
from jacobix.flows.sampling import (
    BlockPlan,
    FlowGuidance,
    masked_relative_residual,
    sample_tarflow,
    uniform_schedule,
)
from jacobix.flows.tarflow import TarFlow, TarFlowConfig

from conftest import read_png

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


@torch.no_grad()
def naive_inverse(model: TarFlow, z: torch.Tensor, labels, guidance: float = 0.0) -> torch.Tensor:
    """Reference sampler: no cache, no engine; recompute each block's whole prefix per position."""
    x = z.clone()
    for block in reversed(model.blocks):
        x = block.permute(x)
        out = x.clone()
        for t in range(1, x.shape[1]):
            a, b = block.affine(out[:, :t], labels)
            if guidance:
                a_u, b_u = block.affine(out[:, :t], torch.full_like(labels, -1))
                a, b = a + guidance * (a - a_u), b + guidance * (b - b_u)
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


@pytest.mark.parametrize("guidance", [None, FlowGuidance(scale=2.0, annealed=True)])
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


def test_masked_residual_equals_relative_residual_when_all_valid():
    g = torch.Generator().manual_seed(0)
    guesses, outputs = torch.randn(3, 5, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    valid = torch.ones(3, 6, dtype=torch.bool)
    torch.testing.assert_close(masked_relative_residual(guesses, outputs, valid), relative_residual(guesses, outputs))
    valid[:, 3:] = False  # only the first 3 guesses count
    expected = relative_residual(guesses[:, :3], outputs[:, :4])
    torch.testing.assert_close(masked_relative_residual(guesses, outputs, valid), expected)
    assert masked_relative_residual(guesses, outputs, torch.zeros_like(valid)).eq(0).all()


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
    with pytest.raises(ValueError, match="multiple of patch_size"):
        TarFlowConfig(img_size=28, patch_size=5)
    with pytest.raises(ValueError, match="unconditional"):
        random_flow(num_classes=0)(torch.zeros(1, 1, 8, 8, dtype=torch.float64), torch.tensor([1]))


def test_denoising_step_moves_noisy_images_toward_the_data(tmp_path):
    model, _ = load_tarflow(DIGITS)
    from jacobix.train.tarflow import load_images

    clean = load_images("digits")[0][:64]
    noisy = clean + model.config.noise_std * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    from jacobix.flows.tarflow import denoise

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


def test_convergence_plot_without_matplotlib_falls_back_to_a_heat_map(tmp_path, monkeypatch):
    import sys

    from jacobix.demos.tarflow import plot_convergence

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    path = plot_convergence(tmp_path / "curves.png", torch.tensor([[1.0, 1e-3, 1e-6], [1.0, 1e-1, 1e-2]], dtype=torch.float64))
    pixels = read_png(path)
    assert pixels.shape[:2] == (2 * 8, 3 * 8)  # one 8x8 cell per (curve, sweep)
    cells = pixels.reshape(2, 8, 3, 8, -1)
    assert (cells == cells[:, :1, :, :1]).all(), "each cell is one colour"
    colour = cells[:, 0, :, 0].astype(int)  # (2, 3, C)
    assert (colour[0, 0] == colour[1, 0]).all()  # both curves start at residual 1
    assert (colour[0, 2] != colour[1, 2]).any() and (colour[0, 1] != colour[0, 0]).any()
