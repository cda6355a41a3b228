"""``bench images --quality``: the FID-proxy's bootstrap interval tells two samples of one
distribution apart from a shifted one, and the command writes the quality fields per row."""

from __future__ import annotations

import json

import torch

from jacobix.bench.images import bootstrap_fid
from jacobix.eval import quality


def gaussian(seed: int, n: int = 1000, shift: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    return torch.randn(n, 8, generator=generator, dtype=torch.float64) * scale + shift


def test_the_interval_holds_its_estimate_and_a_second_sample_but_not_a_shifted_one():
    real = gaussian(0, 20000)
    low, high = bootstrap_fid(gaussian(1), real, 100)
    estimate = quality.frechet_distance(gaussian(1), real)
    assert low <= estimate <= high
    assert low <= quality.frechet_distance(gaussian(2), real) <= high  # same law, another sample
    assert quality.frechet_distance(gaussian(3, shift=0.3), real) > high  # a shifted law


def test_the_interval_is_repeatable_and_narrows_with_more_images():
    real = gaussian(0, 20000)
    assert bootstrap_fid(gaussian(1), real, 50) == bootstrap_fid(gaussian(1), real, 50)
    small = bootstrap_fid(gaussian(1, 250), real, 100)
    large = bootstrap_fid(gaussian(1, 4000), real, 100)
    assert large[1] - large[0] < small[1] - small[0]


def test_bench_images_quality_writes_the_interval_and_the_reference(tmp_path):
    from jacobix.cli import main

    out = tmp_path / "q.json"
    assert main(["bench", "images", "--quick", "--quality", "--per-class", "2", "--decoders", "ar", "sjd:16:random",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["setting"] for r in rows] == ["ar", "sjd w16 random"]
    for r in rows:
        assert r["images"] == 20 and r["fid_low"] <= r["fid_high"] and 0 <= r["class_accuracy"] <= 1
        assert r["real_fid_low"] <= r["real_fid_high"]
        assert r["inside_ar_interval"] == (r["fid_outside_ar"] == 0.0)
    assert rows[0]["inside_ar_interval"]  # AR sits in its own interval
    assert main(["bench", "images", "--grid", "--decoders", "ar"]) == 2
    assert main(["bench", "images", "--decoders", "sjd:16:random"]) == 2  # AR must come first
