"""Offline datasets used to train and evaluate the bundled models. Nothing here downloads anything."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path(os.environ.get("JACOBIX_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_HINT = "apt-get install dataset-fashion-mnist (or set JACOBIX_FASHION_MNIST to a folder of the idx .gz files)"
IMAGE_DATASETS = ("fashion", "digits")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of Fashion-MNIST's ``train`` or ``test`` split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise FileNotFoundError(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}; install it with: {FASHION_MNIST_HINT}")
    return _read_idx(images), _read_idx(labels).astype(np.int64)


def require_fashion_mnist() -> None:
    """Raise FileNotFoundError (naming the folder and how to install it) unless both splits are present."""
    missing = [name for prefix in ("train", "t10k") for name in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
               if not (FASHION_MNIST_DIR / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST not found in {FASHION_MNIST_DIR} (missing {', '.join(missing)}); "
                                f"install it with: {FASHION_MNIST_HINT}")


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as float images in [0, 1], shape (N, 8, 8), and labels (N,)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from error
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def load_images(dataset: str, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Grey-scale images of ``fashion`` (Fashion-MNIST, 28x28) or ``digits`` (scikit-learn, 8x8).

    Args:
        dataset: one of :data:`IMAGE_DATASETS`.
        split: ``train`` or ``test`` (digits has one split and ignores it).
    Returns:
        images (N, 1, H, W) float32 in [-1, 1], and labels (N,) int64.
    """
    if dataset == "fashion":
        images, labels = load_fashion_mnist(split)
        pixels = images.astype(np.float32) / 255.0
    elif dataset == "digits":
        pixels, labels = load_digits_images()
    else:
        raise ValueError(f"dataset must be one of {IMAGE_DATASETS}, got {dataset!r}")
    return torch.from_numpy(pixels * 2 - 1)[:, None], torch.from_numpy(labels)
