"""GS-Jacobi with a tolerance above 0 against a cache-free reference written here.

With a tolerance, a segment is committed while its values still differ from the guesses the
model last saw, so the KV cache holds stale keys for those positions. The reference below keeps
no cache at all: every sweep re-runs the block's transformer over the whole committed prefix
plus the guesses. The engine must agree with it to float64 rounding; a sampler that kept the
stale keys would be off by about the square root of the tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

from jacobix.flows.sampling import BlockPlan, sample_tarflow, uniform_schedule

from test_tarflow import naive_inverse, random_flow


@torch.no_grad()
def naive_gs_block(block, z: torch.Tensor, labels, plan: BlockPlan) -> torch.Tensor:
    """Invert one block (z (B, T, F) in the block's order) by GS-Jacobi, one row at a time, no cache.

    Segments of width W = ceil((T-1) / segments) after x_0 = z_0. A sweep feeds the committed
    prefix and the W-1 guesses for the segment, and updates the W values of the segment
    ``x_t = z_t * exp(a_{t-1}) + b_{t-1}``. The segment is committed when the relative change of
    the guessed values ``sum (new - old)^2 / sum new^2`` is at most the tolerance, or after
    ``max_sweeps`` sweeps (default W); otherwise the new values become the guesses.
    """
    rows, t, _ = z.shape
    width = math.ceil((t - 1) / min(plan.segments, t - 1))
    cap = plan.max_sweeps or width
    out = z.clone()
    for row in range(rows):
        label = None if labels is None else labels[row : row + 1]
        x = z[row : row + 1].clone()  # (1, T, F); x[:, :n] is committed
        n = 1
        while n < t:
            guessed = list(range(n, min(n + width - 1, t)))  # positions with a guess
            updated = list(range(n, min(n + width, t)))  # positions the sweep solves
            guesses = z[row : row + 1, guessed].clone() if plan.init == "z" else torch.zeros_like(z[row : row + 1, guessed])
            sweeps = 0
            while True:
                sweeps += 1
                sequence = torch.cat([x[:, :n], guesses], 1)  # (1, n + len(guessed), F)
                a, b = block.affine(sequence, label)  # no cache: a causal pass over everything
                new = torch.stack([z[row, p] * torch.exp(a[0, p - 1]) + b[0, p - 1] for p in updated])[None]  # (1, len(updated), F)
                change = float((new[:, : len(guessed)] - guesses).pow(2).sum())
                scale = float(new[:, : len(guessed)].pow(2).sum())
                residual = change / scale if guessed else 0.0
                if residual <= plan.tolerance or sweeps >= cap:
                    x[:, updated] = new
                    n += width
                    break
                guesses = new[:, : len(guessed)]
        out[row] = x[0]
    return out


@torch.no_grad()
def naive_gs_sample(model, noise: torch.Tensor, labels, plan: BlockPlan) -> torch.Tensor:
    x = noise.clone()
    for block in reversed(model.blocks):
        x = block.permute(naive_gs_block(block, block.permute(x), labels, plan))
    return model.unpatchify(x)


@pytest.mark.parametrize(
    "plan",
    [
        BlockPlan(mode="gs", segments=3, tolerance=1e-3),
        BlockPlan(mode="gs", segments=2, tolerance=1e-4, init="zeros"),
        BlockPlan(mode="gs", segments=4, tolerance=1e-2, max_sweeps=2),
    ],
)
def test_gs_jacobi_with_tolerance_equals_the_cache_free_reference(plan):
    model = random_flow()
    noise = torch.randn(4, 16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 1, 2, 1])
    got = sample_tarflow(model, noise, labels, schedule=uniform_schedule(3, plan), denoise_step=False)
    reference = naive_gs_sample(model, noise, labels, plan)
    torch.testing.assert_close(got.raw, reference, rtol=0, atol=1e-10)
    # the tolerance really was used: the result is not the sequential sample
    exact = naive_inverse(model, noise, labels)
    assert float((got.raw - exact).abs().max()) > 1e-7
