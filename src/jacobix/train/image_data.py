"""Fashion-MNIST as image-token sequences: VQ codes, class-prefixed rows, draft tables, test loss.

Shared by the image-token recipes (:mod:`jacobix.train.recipes.image_ar`, :mod:`jacobix.train.recipes.sjd2`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from jacobix.core.checkpoints import cache_dir
from jacobix.eval.datasets import load_fashion_mnist
from jacobix.images.model import ImageVocab
from jacobix.models.llama import Llama


def tokenize_split(split: str, tokenizer: nn.Module, *, cache: Path | None = None) -> tuple[Tensor, Tensor]:
    """A Fashion-MNIST split as VQ codes (N, 196) and labels (N,).

    Encoding 60,000 images takes about half a minute on one core, so an encoded split is kept in
    ``cache`` (default :func:`~jacobix.core.checkpoints.cache_dir` ``("fmnist-codes")``), keyed by
    the tokenizer's weights: later runs, and every rank of a torchrun job, read it back. A damaged
    cache file is encoded again and rewritten, never trusted.
    """
    path = (cache_dir("fmnist-codes") if cache is None else Path(cache)) / f"{split}-{_weights_key(tokenizer)}.safetensors"
    if path.is_file():
        try:
            stored = load_file(path)
            codes, labels = stored["codes"].long(), stored["labels"].long()
            if codes.dim() == 2 and labels.shape == codes.shape[:1]:
                return codes, labels
        except Exception:  # a torn or foreign file: encode again below
            pass
    images, labels = load_fashion_mnist(split)
    codes, labels = tokenizer.encode(torch.tensor(images)).flatten(1), torch.tensor(labels).long()  # (N, 196), (N,)
    if int(codes.max()) >= 2**15:  # stored as int16
        return codes, labels
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # ranks write their own, then swap
        save_file({"codes": codes.to(torch.int16).contiguous(), "labels": labels.to(torch.int16).contiguous()}, partial)
        partial.replace(path)
    except OSError:  # a read-only cache only costs the next run the encoding
        pass
    return codes, labels


def _weights_key(module: nn.Module) -> str:
    """A short hash of a module's weights (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def class_sequences(codes: Tensor, labels: Tensor, vocab: ImageVocab, dropout: float,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Inputs ``[class] + codes[:-1]`` (B, 196) and targets ``codes`` (B, 196); each class token becomes
    the null token with probability ``dropout`` (classifier-free guidance)."""
    prompt = vocab.class_tokens(labels)  # (B,)
    drop = torch.rand(len(labels), generator=generator) < dropout
    prompt = torch.where(drop, vocab.null_token, prompt)
    return torch.cat([prompt[:, None], codes[:, :-1]], dim=1), codes


@torch.no_grad()
def evaluate(model: Llama, codes: Tensor, labels: Tensor, vocab: ImageVocab, n: int = 1000) -> float:
    """Mean conditional cross-entropy (nats per code) on the first ``n`` sequences."""
    inputs, targets = class_sequences(codes[:n], labels[:n], vocab, 0.0, torch.Generator())
    losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in zip(inputs.split(100), targets.split(100))]
    return sum(losses) / len(losses)


def save_draft_tables(out_dir: str | Path, codes: Tensor, labels: Tensor, vocab: ImageVocab) -> None:
    """Write smoothed code frequencies used as draft distributions (``drafts.safetensors``).

    ``position_prior`` (num_classes, 196, num_codes): frequency of each code at each grid cell per
    class. ``above_transition`` (num_codes, num_codes): frequency of a code given the code above.
    """
    from safetensors.torch import save_file

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    k, cells = vocab.num_codes, vocab.image_tokens
    prior = torch.zeros(vocab.num_classes, cells, k, dtype=torch.float64)
    prior.index_put_((labels[:, None].expand_as(codes), torch.arange(cells).expand_as(codes), codes),
                     torch.ones(codes.shape, dtype=torch.float64), accumulate=True)
    above = torch.zeros(k, k, dtype=torch.float64)
    up, down = codes[:, : -vocab.grid], codes[:, vocab.grid :]
    above.index_put_((up.flatten(), down.flatten()), torch.ones(up.numel(), dtype=torch.float64), accumulate=True)
    tables = {
        "position_prior": _normalize(prior + 0.01).to(torch.float16),
        "above_transition": _normalize(above + 0.01).to(torch.float16),
    }
    save_file({name: t.contiguous() for name, t in tables.items()}, str(Path(out_dir) / "drafts.safetensors"))


def _normalize(counts: Tensor) -> Tensor:
    return counts / counts.sum(-1, keepdim=True)


__all__ = ["class_sequences", "evaluate", "save_draft_tables", "tokenize_split"]
