"""Smoke tests of the image benchmark and demo on the bundled model (small sample counts)."""

from __future__ import annotations

import pytest
import torch

from jacobix.bench.images import ImageBenchConfig, bench_images, parse_decoder, permutation_test
from jacobix.demos.images import demo_images
from jacobix.images.sample import ImageSampling

from conftest import read_png


def test_bench_table_on_a_tiny_run():
    config = ImageBenchConfig(decoders=("ar", "sjd-coupled:16:prior-above"), per_class=1, seeds=(0, 1), permutations=5)
    result = bench_images(config)
    assert [r.name for r in result.rows] == ["ar", "sjd-coupled w16 prior-above"]
    ar, sjd = result.rows
    assert ar.passes_per_image == 196 and ar.batch_passes == 2 * 196
    assert sjd.passes_per_image < 196 and sjd.pass_ratio == pytest.approx(ar.batch_passes / sjd.batch_passes)
    assert len(sjd.fid) == 2 and len(sjd.accuracy) == 2
    for row in (ar, sjd):  # 10 images per seed: accuracy counts whole images; chance is 0.1
        assert all(abs(10 * a - round(10 * a)) < 1e-9 for a in row.accuracy)
        assert sum(row.accuracy) / 2 >= 0.3, "the generated classes are not recognised: labels and images disagree?"
    table = result.table()
    assert "FID-proxy" in table and "sjd-coupled w16 prior-above" in table


def test_parse_decoder_specs_and_errors():
    assert parse_decoder("ar") == ImageSampling(method="ar")
    spec = parse_decoder("sjd-coupled:32:prior", cfg_scale=2.0)
    assert (spec.method, spec.window, spec.init, spec.coupled, spec.cfg_scale) == ("sjd", 32, "prior", True, 2.0)
    with pytest.raises(ValueError, match="bad decoder spec"):
        parse_decoder("sjd:sixteen:random")
    with pytest.raises(ValueError, match="start with the AR baseline"):
        ImageBenchConfig(decoders=("sjd:16:random",))
    with pytest.raises(ValueError, match="unknown image init"):
        ImageBenchConfig(decoders=("ar", "sjd:16:diagonal"))


def test_permutation_test_is_calibrated_and_separates_shifted_features():
    generator = torch.Generator().manual_seed(0)
    null = torch.tensor([permutation_test(torch.randn(200, 4, generator=generator), torch.randn(200, 4, generator=generator),
                                          40, seed=i)[1] for i in range(20)])
    assert 0.3 < float(null.mean()) < 0.7 and int((null < 0.05).sum()) <= 3  # p-values roughly uniform
    a, b = torch.randn(200, 4, generator=generator), torch.randn(200, 4, generator=generator)
    assert permutation_test(a, b + 0.5, 40)[1] < 0.05


def test_demo_writes_pictures(tmp_path):
    result = demo_images(tmp_path, per_class=1)
    grid, heatmap = read_png(result.grid_path), read_png(result.heatmap_path)
    assert grid.std() > 20 and heatmap.std() > 20  # pictures, not blank canvases
    assert grid.shape[0] >= 10 * 28 and grid.shape[1] >= 2 * 28  # ten classes, AR beside SJD
    animation = result.animation_path.read_bytes()
    frames = animation.count(b"fcTL")
    assert frames >= 2 and read_png(result.animation_path).std() > 0
    assert "sjd-coupled" in result.table and "ar" in result.table
