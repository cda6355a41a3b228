"""Character-level tokenizer of the bundled Shakespeare model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class CharTokenizer:
    """Maps each character of ``alphabet`` to its index; other characters are refused."""

    alphabet: str

    def encode(self, text: str) -> Tensor:
        index = {c: i for i, c in enumerate(self.alphabet)}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise ValueError(f"characters {''.join(unknown)!r} are not in this model's alphabet {self.alphabet!r}")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, tokens: Tensor | list[int]) -> str:
        return "".join(self.alphabet[int(t)] for t in tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)
