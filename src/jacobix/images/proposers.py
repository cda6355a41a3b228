"""Draft rules for image grids, as :class:`~jacobix.tokens.proposers.basic.DraftInit` callables.

SJD stays lossless whatever the draft rule, as long as each draft is drawn from the distribution
it reports; a better rule only makes more drafts pass. Besides the core rules (``random``,
``repeat``, ``row-above``), this module offers rules that *sample* drafts from small tables
saved next to the bundled model (``drafts.safetensors``, written by ``jacobix train image-ar``):

- ``codes-random``: uniform over image codes only (the core ``random`` also draws class tokens,
  which the code-only target always rejects).
- ``prior``: the code frequency of this grid cell for this class.
- ``prior-above``: the product of ``prior`` and the frequency of a code given the code above
  (the row-above idea of the SJD paper, made probabilistic), renormalised.

A sampled draft ``d ~ q`` is accepted with probability ``sum_v min(p_v, q_v)`` on average, so a
table close to the model's conditional beats a one-hot copy whenever the copy is often wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from jacobix.tokens.proposers.basic import CopyInit, DraftContext, DraftInit, RandomInit, resolve_init
from jacobix.core.sampling import randint, sample

if TYPE_CHECKING:
    from jacobix.images.model import ImageModel

IMAGE_INITS = ("random", "repeat", "row-above", "codes-random", "prior", "prior-above")


@dataclass(frozen=True)
class CodeRandomInit:
    """Uniformly random image codes; the draft distribution is uniform over the codes."""

    num_codes: int

    def __call__(self, context: DraftContext) -> tuple[Tensor, Tensor | None]:
        b, d = context.positions.shape
        device = context.canvas.device
        tokens = randint(self.num_codes, (b, d), device, context.generator)  # (B, D)
        p_draft = torch.zeros(b, d, context.vocab_size, device=device)
        p_draft[..., : self.num_codes] = 1.0 / self.num_codes
        return tokens, p_draft


@dataclass(frozen=True, eq=False)
class GridTableInit:
    """Sample each draft from ``prior[class, cell] ** prior_weight * above[code above] ** above_weight``.

    Args:
        prior: (C + 1, cells, K) code frequencies per class and grid cell; row C is for the
            null class (or any prompt that is not a class token).
        above: (K, K) frequency of a code given the code one row above; None to ignore it.
        num_codes: K, the image codes are tokens ``0 .. K - 1``.
        grid: tokens per image row.
    The class is read from the last prompt token; cells in the first row ignore ``above``.
    Drafts are drawn one grid row of slots at a time, so a slot may condition on a fresh slot above it.
    """

    prior: Tensor
    above: Tensor | None
    num_codes: int
    grid: int

    def __post_init__(self) -> None:
        k = self.num_codes
        if self.prior.dim() != 3 or self.prior.shape[2] != k or self.prior.shape[1] != self.grid * self.grid:
            raise ValueError(f"prior must be (classes + 1, {self.grid ** 2}, {k}), got {tuple(self.prior.shape)}")
        if self.above is not None and tuple(self.above.shape) != (k, k):
            raise ValueError(f"above must be ({k}, {k}), got {tuple(self.above.shape)}")

    def __call__(self, context: DraftContext) -> tuple[Tensor, Tensor | None]:
        canvas = context.canvas.clone()  # (B, C)
        b, d = context.positions.shape
        rows = torch.arange(b, device=canvas.device)
        prompt_end = context.prompt_length - 1
        klass = (canvas[rows, prompt_end] - self.num_codes).clamp(0, self.prior.shape[0] - 1)  # (B,)
        cell = (context.positions - context.prompt_length[:, None]).clamp(0, self.prior.shape[1] - 1)  # (B, D)
        tokens = torch.zeros(b, d, dtype=torch.long, device=canvas.device)
        p_draft = torch.zeros(b, d, context.vocab_size, device=canvas.device)
        for first in range(0, d, self.grid):
            span = slice(first, min(first + self.grid, d))
            q = self._table(canvas, klass, cell[:, span], context.positions[:, span])  # (B, S, K)
            drawn = sample(q, context.generator)  # (B, S)
            keep = ~context.fresh[:, span]
            canvas.scatter_(1, context.positions[:, span], torch.where(keep, canvas.gather(1, context.positions[:, span]), drawn))
            tokens[:, span], p_draft[:, span, : self.num_codes] = drawn, q
        return tokens, p_draft

    def _table(self, canvas: Tensor, klass: Tensor, cell: Tensor, positions: Tensor) -> Tensor:
        q = self.prior.to(canvas.device)[klass[:, None], cell].float()  # (B, S, K)
        if self.above is not None:
            above_token = canvas.gather(1, (positions - self.grid).clamp_min(0)).clamp(0, self.num_codes - 1)  # (B, S)
            transition = self.above.to(canvas.device)[above_token].float()  # (B, S, K)
            has_above = (cell >= self.grid)[..., None]
            q = torch.where(has_above, q * transition, q)
        return q / q.sum(-1, keepdim=True)


def load_draft_tables(directory: str | Path) -> dict[str, Tensor]:
    """The tables in ``directory/drafts.safetensors`` (float32)."""
    from jacobix.core.checkpoints import read_tensors

    path = Path(directory) / "drafts.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no draft tables at {path}; they are written by: jacobix train image-ar --out {directory}")
    return {name: t.float() for name, t in read_tensors(path).items()}


def resolve_image_init(init: str | DraftInit, model: ImageModel) -> DraftInit:
    """A draft rule by name (see :data:`IMAGE_INITS`) for ``model``, or ``init`` itself if callable."""
    if not isinstance(init, str):
        return init
    vocab = model.vocab
    if init in ("random", "repeat", "row-above"):
        return resolve_init(init, row_length=vocab.grid)
    if init == "codes-random":
        return CodeRandomInit(vocab.num_codes)
    if init in ("prior", "prior-above"):
        tables = load_draft_tables(model.directory)
        prior = tables["position_prior"]  # (C, cells, K)
        prior = torch.cat([prior, prior.mean(0, keepdim=True)])  # (C + 1, cells, K)
        above = tables["above_transition"] if init == "prior-above" else None
        return GridTableInit(prior, above, vocab.num_codes, vocab.grid)
    raise ValueError(f"unknown image init {init!r}; use one of {', '.join(IMAGE_INITS)} or a DraftInit callable")


__all__ = ["CodeRandomInit", "CopyInit", "GridTableInit", "IMAGE_INITS", "RandomInit", "load_draft_tables", "resolve_image_init"]
