"""Smoke tests of the image benchmark and demo on the bundled model (small sample counts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jacobix.tokens.decoding import Decoding
from PIL import Image

from jacobix.bench.images import ImageBenchConfig, bench_images, parse_decoder, permutation_test
from jacobix.demos.images import demo_images
from jacobix.eval import figures
from jacobix.images.sample import ImageSampling



def test_bench_table_on_a_tiny_run():
    config = ImageBenchConfig(decoders=("ar", "sjd-coupled:16:prior-above"), per_class=1, seeds=(0, 1), permutations=5)
    result = bench_images(config)
    assert [r.name for r in result.rows] == ["ar", "sjd-coupled w16 prior-above"]
    ar, sjd = result.rows
    assert ar.passes_per_image == 195 and ar.batch_passes == 2 * 195  # the prefill pass gives the first token
    assert sjd.passes_per_image < 195 and sjd.pass_ratio == pytest.approx(ar.batch_passes / sjd.batch_passes)
    assert len(sjd.fid) == 2 and len(sjd.accuracy) == 2
    for row in (ar, sjd):  # 10 images per seed: accuracy counts whole images; chance is 0.1
        assert all(abs(10 * a - round(10 * a)) < 1e-9 for a in row.accuracy)
        assert sum(row.accuracy) / 2 >= 0.3, "the generated classes are not recognised: labels and images disagree?"
    table = result.table()
    assert "FID-proxy" in table and "sjd-coupled w16 prior-above" in table


def test_sjd2_rows_and_json_records():
    config = ImageBenchConfig(decoders=("ar", "sjd2:24:4:codes-random:coupled", "sjd2:24:4:codes-random:lossy", "ar@fmnist-ar"),
                              per_class=1, seeds=(0,), permutations=3, batch_size=10)
    result = bench_images(config)
    ar, sjd2, lossy, original = result.records()
    assert [r["model"] for r in (ar, sjd2, lossy, original)] == ["fmnist-ar-sjd2"] * 3 + ["fmnist-ar"]
    assert (sjd2["lossless"], lossy["lossless"], ar["lossless"]) == (True, False, True)
    assert sjd2["passes_per_image"] < ar["passes_per_image"] == 195
    assert sjd2["passes_vs_ar"] == pytest.approx(195 / sjd2["passes_per_image"], rel=1e-2)
    for record in (ar, sjd2, lossy, original):
        for key in ("setting", "passes_vs_ar", "wall_vs_ar", "batch_size", "fid_proxy", "accuracy"):
            assert key in record
    assert original["setting"].endswith("@fmnist-ar") and "NO (lossy)" in result.table()


def test_parse_decoder_specs_and_errors():
    spec = parse_decoder("sjd2:64:10:prior-above:coupled:lossy")
    assert (spec.method, spec.decoding.window, spec.sjd2.levels, spec.sjd2.coupled, spec.sjd2.lossy, spec.lossless) == \
        ("sjd2", 64, 10, True, True, False)
    for bad in ("sjd2:64:prior-above", "sjd2:64:10:prior-above:fast", "sjd2:64:10:prior-above:lossy:lossy"):
        with pytest.raises(ValueError, match="bad decoder spec"):
            parse_decoder(bad)
    with pytest.raises(ValueError, match="name a model"):
        ImageBenchConfig(decoders=("ar", "ar@"))
    assert parse_decoder("ar") == ImageSampling(decoding=Decoding(method="ar"))
    spec = parse_decoder("sjd-coupled:32:prior", cfg_scale=2.0)
    assert (spec.method, spec.decoding.window, spec.decoding.init, spec.cfg_scale) == ("sjd-coupled", 32, "prior", 2.0)
    with pytest.raises(ValueError, match="bad decoder spec"):
        parse_decoder("sjd:sixteen:random")
    with pytest.raises(ValueError, match="start with the AR baseline"):
        ImageBenchConfig(decoders=("sjd:16:random",))
    with pytest.raises(ValueError, match="unknown .*init"):
        ImageBenchConfig(decoders=("ar", "sjd:16:diagonal"))


def test_permutation_test_is_calibrated_and_separates_shifted_features():
    generator = torch.Generator().manual_seed(0)
    null = torch.tensor([permutation_test(torch.randn(200, 4, generator=generator), torch.randn(200, 4, generator=generator),
                                          40, seed=i)[1] for i in range(20)])
    assert 0.3 < float(null.mean()) < 0.7 and int((null < 0.05).sum()) <= 3  # p-values roughly uniform
    a, b = torch.randn(200, 4, generator=generator), torch.randn(200, 4, generator=generator)
    assert permutation_test(a, b + 0.5, 40)[1] < 0.05


def test_demo_writes_labelled_pictures(tmp_path, monkeypatch):
    saved, save = {}, figures.save

    def recording_save(figure, path):
        saved[Path(path).name] = figure
        return save(figure, path)

    monkeypatch.setattr(figures, "save", recording_save)
    result = demo_images(tmp_path, per_class=1)
    assert [p.name for p in result.paths] == ["samples_ar_vs_sjd.png", "accept_sweep.png", "sjd_progress.gif",
                                              "sjd2_denoising.png"]
    assert all(p.parent == tmp_path and p.exists() for p in result.paths)
    ar, sjd = saved["samples_ar_vs_sjd.png"].axes
    assert ar.get_title().startswith("AR") and sjd.get_title().startswith("SJD")
    assert [t.get_text() for t in ar.get_yticklabels()] == list(figures.CLASS_NAMES)
    denoise = saved["sjd2_denoising.png"].axes[0]
    assert denoise.get_xlabel().startswith("token position") and denoise.get_ylabel().startswith("sweep")
    assert "noise level" in denoise.images[1].colorbar.ax.get_ylabel() and denoise.get_legend() is not None
    assert "sjd2" in saved["sjd2_denoising.png"]._suptitle.get_text()
    heat = saved["accept_sweep.png"].axes[1]
    assert heat.images[0].colorbar.ax.get_ylabel() == "sweep" and heat.images[0].get_clim()[1] > 1
    for name in saved:
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and np.asarray(image.convert("L")).std() > 10
    with Image.open(result.animation_path) as gif:
        assert gif.format == "GIF" and gif.n_frames > 1
        first = np.asarray(gif.convert("RGB"))
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 20
    assert "sjd-coupled" in result.table and "ar" in result.table


def test_cli_demo_prints_every_file_it_writes(tmp_path, monkeypatch, capsys):
    import jacobix.demos.images as demo_images_module
    import jacobix.demos.tarflow as demo_tarflow_module
    from jacobix.cli import main
    from jacobix.demos.images import DemoResult
    from jacobix.demos.tarflow import TarFlowDemo

    images = DemoResult(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.gif", table="table")
    flows = TarFlowDemo(tmp_path / "d.png", tmp_path / "e.png", tmp_path / "f.png", tmp_path / "g.csv", torch.zeros(1, 1), ())
    monkeypatch.setattr(demo_images_module, "demo_images", lambda *args, **kwargs: images)
    monkeypatch.setattr(demo_tarflow_module, "demo_tarflow", lambda *args, **kwargs: flows)
    assert main(["demo", "images", "--quick", "--out", str(tmp_path)]) == 0
    assert main(["demo", "tarflow", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for path in (*images.paths, *flows.paths):
        assert f"wrote {path}" in printed
