"""The offline quality measures of jacobix.eval.quality (bundled Fashion-MNIST classifier)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jacobix.eval import quality
from jacobix.eval.datasets import load_fashion_mnist


@pytest.fixture(scope="module")
def test_split():
    images, labels = load_fashion_mnist("test")
    return images, labels


def test_frechet_distance_of_known_gaussians():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(20000, 3, generator=generator, dtype=torch.float64) * 2 + 1
    # |mu|^2 = 3; trace term per dim: 1 + 4 - 2 * 2 = 1 -> 3; total 6
    assert quality.frechet_distance(a, b) == pytest.approx(6.0, abs=0.15)
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_classifier_accuracy_on_real_test_set(test_split):
    images, labels = test_split
    accuracy = quality.class_accuracy(images[:2000], labels[:2000])
    assert accuracy > 0.85  # the bundled classifier scores about 0.89 on the whole test set
    shuffled = np.roll(labels[:2000], 1)
    assert quality.class_accuracy(images[:2000], shuffled) < 0.3


def test_fid_proxy_real_vs_real_small_and_noise_large(test_split):
    images, _ = test_split
    train, _ = load_fashion_mnist("train")
    real_vs_real = quality.fid_proxy(train[:2000], images[:2000])
    noise = torch.rand(2000, 28, 28, generator=torch.Generator().manual_seed(0))
    real_vs_noise = quality.fid_proxy(noise, images[:2000])
    assert real_vs_real < 0.05 * real_vs_noise
    assert real_vs_noise > 10 * max(real_vs_real, 1e-3)


def test_uint8_and_float_inputs_agree(test_split):
    images, _ = test_split
    a = quality.features(images[:50])
    b = quality.features(torch.tensor(images[:50]).float() / 255)
    c = quality.features(torch.tensor(images[:50])[:, None])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(4, 32, 32), "shape"),
        (torch.zeros(0, 28, 28), "N >= 1"),
        (torch.full((2, 28, 28), 255.0), r"\[0, 1\]"),
        (torch.zeros(2, 28, 28, dtype=torch.int32), "uint8"),
        ([[0.0]], "torch.Tensor or numpy"),
    ],
)
def test_bad_images_are_refused(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        quality.features(bad)


def test_label_count_must_match(test_split):
    images, labels = test_split
    with pytest.raises(ValueError, match="one label per sample"):
        quality.class_accuracy(images[:10], labels[:9])


def test_missing_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="jacobix train classifier"):
        quality.load_classifier(tmp_path)
