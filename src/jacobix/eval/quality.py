"""Offline image quality for 28x28 grayscale samples: a bundled Fashion-MNIST classifier.

Two measures, both computed with the small CNN in ``assets/fmnist-classifier`` (trained by
``jacobix train classifier``), so nothing is downloaded:

- **FID-proxy (classifier features)**: the Frechet distance between Gaussians fitted to the
  classifier's penultimate features of two image sets. It is *not* Inception FID; numbers are
  comparable only with each other.
- **class accuracy**: how often the classifier assigns a class-conditional sample its class.

Images are (N, 28, 28) or (N, 1, 28, 28), either uint8 in [0, 255] or floats in [0, 1].

Example::

    from jacobix.eval import quality
    real, _ = jacobix.eval.datasets.load_fashion_mnist("test")
    quality.fid_proxy(samples, real)          # float, 0 for identical distributions
    quality.class_accuracy(samples, labels)   # float in [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jacobix import assets
from jacobix.core.checkpoints import METADATA, WEIGHTS, build_config, load_weights, read_metadata, save_checkpoint

IMAGE_SIZE = 28
ImageBatch = Tensor | np.ndarray


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """Shape of :class:`Classifier`: two conv blocks, then a feature layer and class logits."""

    channels: tuple[int, int] = (16, 32)
    feature_dim: int = 64
    num_classes: int = 10

    def __post_init__(self) -> None:
        if len(self.channels) != 2 or min(self.channels) < 1:
            raise ValueError(f"ClassifierConfig.channels must be two positive ints, got {self.channels}")
        if self.feature_dim < 1 or self.num_classes < 2:
            raise ValueError("ClassifierConfig needs feature_dim >= 1 and num_classes >= 2")


class Classifier(nn.Module):
    """A small CNN for 28x28 grayscale images; ``features`` gives the penultimate layer."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc = nn.Linear(c2 * 7 * 7, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Images (N, 1, 28, 28) in [0, 1] to features (N, feature_dim)."""
        x = F.max_pool2d(F.relu(self.conv1(x * 2 - 1)), 2)  # (N, c1, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, c2, 7, 7)
        return F.relu(self.fc(x.flatten(1)))  # (N, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Images (N, 1, 28, 28) in [0, 1] to class logits (N, num_classes)."""
        return self.head(self.features(x))


def save_classifier(model: Classifier, directory: str | Path, *, extra: dict | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
    save_checkpoint(model, directory, architecture="fmnist-classifier", extra=extra)


def load_classifier(directory: str | Path | None = None) -> Classifier:
    """The bundled Fashion-MNIST classifier (or one saved by :func:`save_classifier`), in eval mode.

    Args:
        directory: checkpoint folder; None for the bundled ``assets/fmnist-classifier``.
    Returns:
        a float32 :class:`Classifier` on the CPU.
    Raises:
        FileNotFoundError: when the checkpoint is missing (train it with ``jacobix train classifier``).
    """
    if directory is None:
        return _bundled_classifier()
    return _load(Path(directory))


@lru_cache(maxsize=1)
def _bundled_classifier() -> Classifier:
    return _load(assets.get("fmnist-classifier", kind="classifier").path)


def _load(directory: Path) -> Classifier:
    hint = f"train one with: jacobix train classifier --out {directory}"
    config = read_metadata(directory, architecture="fmnist-classifier", hint=hint)["config"]
    model = Classifier(build_config(ClassifierConfig, config, source=directory / METADATA))
    load_weights(model, directory / WEIGHTS)
    return model.eval()


def to_unit_images(images: ImageBatch, name: str = "images") -> Tensor:
    """Validate images and return float32 (N, 1, 28, 28) in [0, 1].

    Args:
        images: (N, 28, 28) or (N, 1, 28, 28); uint8 in [0, 255] or floats in [0, 1].
        name: argument name for error messages.
    """
    x = torch.tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(images).__name__}")
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE) or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, 28, 28) or (N, 1, 28, 28) with N >= 1, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float().div(255.0)
    if not x.is_floating_point():
        raise ValueError(f"{name} must be uint8 in [0, 255] or floats in [0, 1], got dtype {x.dtype}")
    x = x.detach().float().cpu()
    if not bool(torch.isfinite(x).all()) or float(x.min()) < -1e-3 or float(x.max()) > 1 + 1e-3:
        raise ValueError(f"float {name} must be finite and in [0, 1]; divide uint8-range images by 255")
    return x.clamp(0.0, 1.0)


@torch.no_grad()
def features(images: ImageBatch, *, classifier: Classifier | None = None, batch_size: int = 1000) -> Tensor:
    """Penultimate classifier features (N, feature_dim) of images (see :func:`to_unit_images`)."""
    model = classifier or load_classifier()
    x = to_unit_images(images)
    return torch.cat([model.features(chunk) for chunk in x.split(batch_size)]).double()


@torch.no_grad()
def predict(images: ImageBatch, *, classifier: Classifier | None = None, batch_size: int = 1000) -> Tensor:
    """Predicted class (N,) of each image."""
    model = classifier or load_classifier()
    x = to_unit_images(images)
    return torch.cat([model(chunk).argmax(-1) for chunk in x.split(batch_size)])


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to features (N, F) and (M, F).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, computed with symmetric
    eigendecompositions in float64 (no scipy needed).
    """
    if features_a.dim() != 2 or features_b.dim() != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features must be (N, F) and (M, F), got {tuple(features_a.shape)} and {tuple(features_b.shape)}")
    if min(features_a.shape[0], features_b.shape[0]) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples on each side")
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # (F, F)
    root_a = _psd_sqrt(cov_a)
    cross = _psd_sqrt(root_a @ cov_b @ root_a)
    value = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross.trace()
    return max(float(value), 0.0)


def _psd_sqrt(matrix: Tensor) -> Tensor:
    eigenvalues, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * eigenvalues.clamp_min(0).sqrt()) @ vectors.T


def fid_proxy(samples: ImageBatch, reference: ImageBatch, *, classifier: Classifier | None = None) -> float:
    """FID-proxy (classifier features) between two image sets; 0 means identical statistics.

    Args:
        samples: generated images, (N, 28, 28) or (N, 1, 28, 28), uint8 or floats in [0, 1].
        reference: real images in the same format (e.g. the Fashion-MNIST test set).
        classifier: defaults to the bundled one.
    Returns:
        the Frechet distance between the feature Gaussians (float >= 0).
    """
    return frechet_distance(features(samples, classifier=classifier), features(reference, classifier=classifier))


def class_accuracy(samples: ImageBatch, labels: Tensor | np.ndarray, *, classifier: Classifier | None = None) -> float:
    """Fraction of class-conditional samples that the classifier assigns their label.

    Args:
        samples: (N, 28, 28) or (N, 1, 28, 28) images.
        labels: (N,) intended classes in [0, 10).
    Returns:
        accuracy in [0, 1].
    """
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long().flatten().cpu()
    predicted = predict(samples, classifier=classifier)
    if labels.shape[0] != predicted.shape[0]:
        raise ValueError(f"got {predicted.shape[0]} samples but {labels.shape[0]} labels; give one label per sample")
    return float((predicted == labels).double().mean())


__all__ = [
    "Classifier",
    "ClassifierConfig",
    "class_accuracy",
    "features",
    "fid_proxy",
    "frechet_distance",
    "load_classifier",
    "predict",
    "save_classifier",
    "to_unit_images",
]
