"""The bundled class-conditional image model: a Llama over VQ token grids, and its vocabulary.

Token layout: ``[0, num_codes)`` are image codes, then one token per class, then the null class
token used as the unconditional prompt of classifier-free guidance. A sequence is
``[class token] + 14 * 14 codes`` in raster order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from jacobix.images.denoise import NoiseEmbedding, load_noise_embedding
from jacobix.images.vq import VQTokenizer, load_vq
from jacobix import assets
from jacobix.models.llama import Llama, load_llama

AR_DIR = assets.get("fmnist-ar", kind="image").path  # the default image model, which jacobix train sjd2 starts from


def as_class_ids(labels) -> Tensor:
    """``labels`` as a long tensor, refusing floats (``1.5`` is no class) and booleans."""
    if isinstance(labels, Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class ids, got a {labels.dtype} tensor")
        return labels.long()
    values = labels.tolist() if hasattr(labels, "tolist") else labels
    flat = values if isinstance(values, (list, tuple)) else [values]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in flat):
        raise ValueError(f"labels must be integer class ids, got {list(flat)[:5]}")
    return torch.as_tensor(flat, dtype=torch.long)


@dataclass(frozen=True, kw_only=True)
class ImageVocab:
    """Where codes, class tokens and the null token live in the model's vocabulary.

    Attributes:
        num_codes: VQ codebook size; codes are tokens ``0 .. num_codes - 1``.
        num_classes: class tokens follow the codes.
        grid: tokens per image side (the grid is ``grid x grid``, raster order).
    """

    num_codes: int
    num_classes: int
    grid: int

    def __post_init__(self) -> None:
        if min(self.num_codes, self.num_classes, self.grid) < 1:
            raise ValueError(f"ImageVocab fields must be >= 1, got {self}")

    @property
    def vocab_size(self) -> int:
        return self.num_codes + self.num_classes + 1

    @property
    def null_token(self) -> int:
        return self.num_codes + self.num_classes

    @property
    def image_tokens(self) -> int:
        return self.grid * self.grid

    def class_tokens(self, labels: Tensor) -> Tensor:
        """Class labels (B,) in [0, num_classes) to prompt token ids (B,); floats and booleans are refused."""
        labels = as_class_ids(labels)
        if labels.dim() != 1 or labels.numel() == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence of class ids, got shape {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"labels must be class ids in [0, {self.num_classes}), got {labels.tolist()[:10]}")
        return labels + self.num_codes

    def prompts(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Conditional prompts (B, 1) and unconditional (null-token) prompts (B, 1)."""
        cond = self.class_tokens(labels)[:, None]  # (B, 1)
        return cond, torch.full_like(cond, self.null_token)


@dataclass(frozen=True)
class CodesOnly:
    """Logits processor that restricts sampling to image codes (masks class and null tokens)."""

    num_codes: int

    def __call__(self, logits: Tensor, new_positions: Tensor) -> Tensor:
        masked = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        masked[self.num_codes :] = True
        return logits.masked_fill(masked, float("-inf"))  # (B, W, V)


@dataclass(frozen=True)
class ImageModel:
    """The bundled generator: AR transformer, VQ tokenizer and vocabulary.

    ``noise`` is the SJD2 noisy-input embedding of a model fine-tuned by ``jacobix train sjd2``
    (:mod:`jacobix.images.denoise`), None for a plain AR model.
    """

    transformer: Llama
    tokenizer: VQTokenizer
    vocab: ImageVocab
    meta: dict
    directory: Path
    noise: NoiseEmbedding | None = None

    @property
    def name(self) -> str:
        """The checkpoint folder's name (``fmnist-ar``, ``fmnist-ar-sjd2``, ...)."""
        return self.directory.name


def bundled_vq(name: str, source: Path) -> Path:
    """The tokenizer folder a checkpoint's config.json names: a folder inside the bundled assets.

    A checkpoint is data, so the name may not reach outside the assets folder (an absolute
    path or ``..``); a tokenizer elsewhere is passed explicitly with ``vq_directory=``.
    """
    path, root = Path(name), assets.ROOT
    if path.is_absolute() or ".." in path.parts or not (root / path).resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{source}/config.json names its VQ tokenizer {name!r}, outside the bundled assets folder; "
                         f"refused: name a folder inside {root} or pass vq_directory= explicitly")
    return root / path


def load_image_model(directory: str | Path | None = None, *, vq_directory: str | Path | None = None) -> ImageModel:
    """Load the class-conditional image model (default: bundled ``assets/fmnist-ar`` + ``assets/fmnist-vq``).

    Args:
        directory: a bundled name (``fmnist-ar``, ``fmnist-ar-sjd2``) or a folder written by
            ``jacobix train image-ar`` or ``jacobix train sjd2``.
        vq_directory: tokenizer folder; default: the one named in the model's config.json.
    Returns:
        an :class:`ImageModel` in eval mode on the CPU.
    """
    name = directory if directory is not None else "fmnist-ar"
    directory = assets.locate(name, kind="image")
    if not (directory / "model.safetensors").exists():
        asset = assets.find(name)
        how = asset.rebuild if asset is not None and asset.kind == "image" else f"jacobix train image-ar --out {directory}"
        raise FileNotFoundError(f"no image model in {directory}; train one with: {how} "
                                f"(bundled names: {', '.join(assets.names('image'))})")
    transformer, meta = load_llama(directory)
    if "image" not in meta:
        raise ValueError(f"{directory}/config.json has no 'image' section; it is not an image model")
    vocab = ImageVocab(**{k: meta["image"][k] for k in ("num_codes", "num_classes", "grid")})
    if vocab.vocab_size != transformer.vocab_size:
        raise ValueError(f"{directory}: vocabulary {transformer.vocab_size} != codes + classes + null ({vocab.vocab_size})")
    tokenizer = load_vq(vq_directory if vq_directory is not None else bundled_vq(meta["image"].get("vq", "fmnist-vq"), directory))
    if tokenizer.config.codebook_size != vocab.num_codes:
        raise ValueError(f"tokenizer has {tokenizer.config.codebook_size} codes, the model expects {vocab.num_codes}")
    noise = load_noise_embedding(directory, meta["sjd2"]["noise"]) if "sjd2" in meta else None
    return ImageModel(transformer, tokenizer, vocab, meta, directory, noise)
