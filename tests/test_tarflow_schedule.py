"""TarFlow on the trained digits model: GS-Jacobi accuracy, the automatic schedule, ml-tarflow
checkpoints, training, the benchmark and the demo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jacobix.flows.calibration import AutoScheduleConfig, auto_schedule, block_metrics, crm, igm, load_schedule, segment_sweeps
from jacobix.flows.checkpoint import apple_to_jacobix, load_apple_checkpoint, load_tarflow
from jacobix.flows.sampling import INITS, BlockPlan, sample_tarflow, uniform_schedule
from jacobix.flows.tarflow import TarFlow, TarFlowConfig
from jacobix.eval.datasets import load_images
from jacobix.train.recipes.tarflow import TarFlowTrainConfig, train_tarflow


DIGITS = Path(__file__).resolve().parent.parent / "src" / "jacobix" / "assets" / "tarflow-digits"
FASHION = Path(__file__).resolve().parent.parent / "src" / "jacobix" / "assets" / "tarflow-fashion"


@pytest.fixture(scope="module")
def digits():
    model, _ = load_tarflow(DIGITS)
    images = load_images("digits")[0]
    g = torch.Generator().manual_seed(0)
    calibration = images[:128] + model.config.noise_std * torch.randn(images[:128].shape, generator=g)
    noise = torch.randn(32, model.config.num_patches, model.config.patch_dim, generator=g)
    sequential = sample_tarflow(model, noise, schedule=uniform_schedule(model.config.num_blocks, BlockPlan(mode="sequential")))
    return model, calibration, noise, sequential


def test_jacobi_and_gs_jacobi_match_sequential_within_stated_tolerance(digits):
    """Stated tolerance on images in [-1, 1] after denoising: max |dx| <= 0.1, mean |dx| <= 5e-3
    for GS-Jacobi at relative residual 1e-4; exact Jacobi (rtol = atol = 0) within 1e-4 in float32."""
    model, calibration, noise, sequential = digits
    blocks = model.config.num_blocks
    jacobi = sample_tarflow(model, noise, schedule=uniform_schedule(blocks, BlockPlan(mode="jacobi")))
    assert float((jacobi.images - sequential.images).abs().max()) <= 1e-4
    plans = auto_schedule(model, calibration).plans
    for schedule in (plans, uniform_schedule(blocks, BlockPlan(mode="gs", segments=3, tolerance=1e-4))):
        fast = sample_tarflow(model, noise, schedule=schedule)
        deviation = (fast.images - sequential.images).abs()
        assert float(deviation.max()) <= 0.1 and float(deviation.mean()) <= 5e-3
        assert fast.forward_passes < sequential.forward_passes


def test_auto_schedule_is_deterministic_and_uses_the_metrics(digits):
    model, calibration, _, _ = digits
    first, second = auto_schedule(model, calibration), auto_schedule(model, calibration)
    assert first == second
    assert abs(sum(m.crm_share for m in first.metrics) - 1) < 1e-9
    for plan, metric, fell_back in zip(first.plans, first.metrics, first.fallback):
        assert metric.init == INITS[metric.igm.index(min(metric.igm))]
        if fell_back:
            assert plan.mode == "sequential"
        else:
            assert plan.mode == "gs" and plan.init == metric.init and 1 <= plan.max_sweeps
    # a block whose share is under the tough threshold is solved whole
    tough = 1.5 / model.config.num_blocks
    for plan, metric in zip(first.plans, first.metrics):
        if plan.mode == "gs" and metric.crm_share < tough:
            assert plan.segments == 1


def test_fallback_to_sequential_when_jacobi_does_not_converge(digits):
    model, calibration, _, _ = digits
    never = auto_schedule(model, calibration, config=AutoScheduleConfig(tolerance=0.0, fallback_ratio=0.01))
    assert all(never.fallback) and all(p.mode == "sequential" for p in never.plans)


def test_igm_prefers_the_true_solution_and_segment_sweeps_counts():
    model = TarFlow(TarFlowConfig(img_size=8, patch_size=2, channels=32, head_dim=16, num_blocks=1, layers_per_block=1)).double()
    block = model.blocks[0]
    torch.nn.init.zeros_(block.proj_out.bias)  # with the zero weight: a = b = 0, so z == x
    x = torch.randn(4, 16, 4, dtype=torch.float64)
    assert igm(block, x, x, None, "z") == 0.0  # starting from z is the solution already
    assert igm(block, x, x, None, "zeros") == 0.0  # one step from anything gives x_t = z_t
    with pytest.raises(ValueError, match="init must be one of"):
        igm(block, x, x, None, "noise")
    committed = torch.tensor([[0, 3], [5, 0], [0, 0], [5, 3], [5, 3]])  # (P=5, B=2)
    assert segment_sweeps(committed).tolist() == [2, 2, 1, 1, 3, 1]


def test_crm_and_igm_use_spectral_norms_on_a_hand_built_block():
    """All block weights zero except proj_out's, so a = b = 0 whatever the input, and
    crm = ||mean_B(x)||_2 * ||W_a||_2 + ||W_b||_2 with known singular values."""
    model = TarFlow(TarFlowConfig(img_size=4, patch_size=2, channels=8, head_dim=8, num_blocks=1, layers_per_block=1)).double()
    block = model.blocks[0]
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.zero_()
        weight = block.proj_out.weight  # (2F, C) = (8, 8): rows 0..3 give a, rows 4..7 give b
        weight[0, 0], weight[1, 1] = 2.0, 1.0  # W_a: singular values 2, 1 (Frobenius sqrt(5))
        weight[4, 0], weight[5, 2] = 3.0, 0.5  # W_b: singular values 3, 0.5
    mean = torch.zeros(4, 4, dtype=torch.float64)
    mean[0, 0], mean[1, 1] = 3.0, 4.0  # spectral 4, Frobenius 5
    spread = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.stack([mean + spread, mean - spread])  # (B=2, T, F), batch mean = mean
    assert crm(block, x, None) == pytest.approx(4 * 2 + 3, rel=1e-12)
    z = x + torch.stack([2 * mean, 0 * mean])  # one step gives z (a = b = 0), so x1 - x has batch mean `mean`
    assert igm(block, x, z, None, "z") == pytest.approx(4.0, rel=1e-12)
    assert igm(block, x, z, None, "zeros") == pytest.approx(4.0, rel=1e-12)


def apple_state_dict(config: TarFlowConfig, prefix: str = "", *, meta: bool = False) -> dict[str, torch.Tensor]:
    """An ml-tarflow ``Model.state_dict()`` (nvp) built from its names and shapes, written out by hand."""
    c, f, t, e = config.channels, config.patch_dim, config.num_patches, config.expansion
    shapes = {"var": (t, f)}
    for i in range(config.num_blocks):
        b = f"blocks.{i}."
        shapes |= {b + "proj_in.weight": (c, f), b + "proj_in.bias": (c,), b + "pos_embed": (t, c), b + "proj_out.weight": (2 * f, c),
                   b + "proj_out.bias": (2 * f,), b + "attn_mask": (t, t)}
        if config.num_classes:
            shapes[b + "class_embed"] = (config.num_classes, 1, c)
        for j in range(config.layers_per_block):
            a = f"{b}attn_blocks.{j}."
            shapes |= {a + "attention.norm.weight": (c,), a + "attention.norm.bias": (c,), a + "attention.qkv.weight": (3 * c, c),
                       a + "attention.qkv.bias": (3 * c,), a + "attention.proj.weight": (c, c), a + "attention.proj.bias": (c,),
                       a + "mlp.norm.weight": (c,), a + "mlp.norm.bias": (c,), a + "mlp.main.0.weight": (e * c, c),
                       a + "mlp.main.0.bias": (e * c,), a + "mlp.main.2.weight": (c, e * c), a + "mlp.main.2.bias": (c,)}
    if meta:
        return {prefix + k: torch.empty(s, device="meta") for k, s in shapes.items()}
    g = torch.Generator().manual_seed(0)
    state = {prefix + k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    for k in state:
        if k.endswith("attn_mask"):
            state[k] = torch.tril(torch.ones(t, t))
        elif k.endswith("var"):
            state[k] = torch.ones(t, f)
    return state


def test_apple_checkpoint_loads_with_weights_only(tmp_path):
    config = TarFlowConfig(in_channels=3, img_size=16, patch_size=4, channels=128, num_blocks=2, layers_per_block=2, num_classes=3, noise_std=0.07)
    state = apple_state_dict(config, prefix="module.")
    torch.save(state, tmp_path / "model.pth")
    model = load_apple_checkpoint(tmp_path / "model.pth", config)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state["module." + key])
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    z, _, _ = model(images, torch.tensor([0, 2]))
    back = sample_tarflow(model, z, torch.tensor([0, 2]), schedule=uniform_schedule(2, BlockPlan(mode="jacobi")), denoise_step=False)
    torch.testing.assert_close(back.raw, images, rtol=0, atol=1e-4)
    wrong = TarFlowConfig(**{**config.__dict__, "num_classes": 0})
    with pytest.raises(ValueError, match="unexpected \\['blocks.0.class_embed"):
        load_apple_checkpoint(tmp_path / "model.pth", wrong)
    # head_dim=32 gives the same parameter shapes (4 heads instead of 2) but another attention: refused
    other_heads = TarFlowConfig(**{**config.__dict__, "head_dim": 32})
    assert TarFlow(other_heads).state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="TarFlowConfig.head_dim is 32: build the config with head_dim=64"):
        load_apple_checkpoint(tmp_path / "model.pth", other_heads)


def test_afhq_config_has_the_released_checkpoints_names_and_shapes():
    afhq = TarFlowConfig(in_channels=3, img_size=256, patch_size=8, channels=768, num_blocks=8, layers_per_block=8, num_classes=3, noise_std=0.07)
    with torch.device("meta"):
        model = TarFlow(afhq)
    expected = apple_to_jacobix(apple_state_dict(afhq, meta=True), afhq)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in expected.items()}


def test_training_runs_and_lowers_the_loss():
    config = TarFlowTrainConfig(steps=30, batch_size=16, lr=3e-3, warmup=5, drop_label=0.0)
    small = TarFlowConfig(img_size=8, patch_size=2, channels=32, head_dim=16, num_blocks=2, layers_per_block=1)
    model = train_tarflow("digits", None, model_config=small, train_config=config)
    images = load_images("digits")[0][:256]
    torch.manual_seed(config.seed)
    untrained = TarFlow(small)
    with torch.no_grad():
        assert float(model.loss(images)) < float(untrained.loss(images))
    with pytest.raises(ValueError, match="dataset must be one of"):
        train_tarflow("mnist", None)


def test_bench_and_demo_on_digits(digits, tmp_path):
    from jacobix.bench.tarflow import TarFlowBenchConfig, bench_tarflow
    import numpy as np
    from PIL import Image

    from jacobix.demos.tarflow import demo_tarflow

    model = digits[0]
    result = bench_tarflow(model, dataset="digits", config=TarFlowBenchConfig(num_samples=16, calibration_samples=32, reference_samples=200))
    names = [r.name for r in result.rows]
    assert names == ["sequential (KV cache)", "jacobi (exact)", "gs-jacobi hand", "gs-jacobi auto"]
    sequential, exact, hand, auto = result.rows
    assert exact.max_deviation <= 1e-4
    for fast in (hand, auto):  # a tolerance above 0 deviates, but within the stated bound
        assert 0.0 < fast.max_deviation <= 0.1 and 0.0 < fast.mean_deviation <= 5e-3
        assert fast.forward_passes < sequential.forward_passes
    assert "speed-up" in result.table() and "CRM shares" in result.table()
    demo = demo_tarflow(tmp_path, model=model, dataset="digits", num_samples=8, tolerance=1e-3)
    assert {plan.tolerance for plan in demo.schedule if plan.mode == "gs"} == {1e-3}  # the tolerance is used
    assert [p.name for p in demo.paths] == ["samples_sequential.png", "samples_gs_jacobi.png", "convergence.png", "convergence.csv"]
    for path in demo.paths[:3]:
        with Image.open(path) as image:
            assert image.format == "PNG" and np.asarray(image.convert("L")).std() > 10
    assert demo.residuals.shape == (model.config.num_blocks, model.config.num_patches - 1)
    assert bool((demo.residuals[:, 0] > demo.residuals[:, 5]).all())  # Jacobi converges


def test_tolerance_defaults_agree_and_the_bundled_schedule_loads():
    from jacobix.bench.tarflow import TarFlowBenchConfig
    from jacobix.cli import parser as _parser

    cli = _parser().parse_args(["bench", "tarflow"]).tolerance
    assert BlockPlan().tolerance == AutoScheduleConfig().tolerance == TarFlowBenchConfig().tolerance == cli == 1e-4
    model, _ = load_tarflow(FASHION)
    plans = load_schedule(FASHION, model.config.num_blocks)
    assert plans is not None and all(plan.mode == "gs" and plan.tolerance == 1e-4 for plan in plans)
    assert all(1 <= plan.max_sweeps <= plan.segment_width(model.config.num_patches) for plan in plans)
    noise = torch.randn(2, model.config.num_patches, model.config.patch_dim, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 7])
    fast = sample_tarflow(model, noise, labels, schedule=plans, denoise_step=False)
    exact = sample_tarflow(model, noise, labels, schedule=uniform_schedule(len(plans), BlockPlan(mode="jacobi")), denoise_step=False)
    assert float((fast.raw - exact.raw).abs().mean()) <= 5e-3  # same tolerance as the digits test
    assert fast.forward_passes < len(plans) * (model.config.num_patches - 1)  # fewer passes than sequential
    with pytest.raises(ValueError, match="recalibrate"):
        load_schedule(FASHION, model.config.num_blocks + 1)


@pytest.mark.slow
def test_bundled_fashion_checkpoint_samples_with_gs_jacobi():
    model, meta = load_tarflow(FASHION)
    assert meta["dataset"] == "fashion" and model.config.num_classes == 10
    metrics = block_metrics(model, load_images("fashion", "test")[0][:64], torch.arange(64) % 10)
    assert len(metrics) == model.config.num_blocks
    noise = torch.randn(8, model.config.num_patches, model.config.patch_dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8)
    sequential = sample_tarflow(model, noise, labels, schedule=uniform_schedule(model.config.num_blocks, BlockPlan(mode="sequential")))
    jacobi = sample_tarflow(model, noise, labels, schedule=uniform_schedule(model.config.num_blocks, BlockPlan(mode="jacobi")))
    assert float((jacobi.images - sequential.images).abs().max()) <= 1e-3
