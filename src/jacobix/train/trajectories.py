"""Jacobi trajectories for consistency distillation (CLLM), collected on the engine.

For every prompt the model decodes greedily in CLLM's block mode: blocks of ``n`` tokens, each
drafted once from the prompt and text so far (``init="context"``) and iterated by greedy Jacobi
until all of it is committed; the next block starts from the previous fixed point. The engine's
``record=True`` keeps every sweep, batched and KV-cached, and :func:`collect` cuts the records
into per-block states.

File format (one safetensors file, no code executed on load; see :func:`save_trajectories`):

=================  ===========  =====================================================================
tensor             shape        meaning
=================  ===========  =====================================================================
prompts            (P, Lp)      prompt tokens, right-padded with 0; ``prompt_length`` (P,)
generated          (P, G)       the model's greedy continuation (the chain of fixed points, after
                                the first token, which the prefill gives); ``generated_length`` (P,)
truth              (P, T)       the ground-truth continuation of the prompt; ``truth_length`` (P,)
block_prompt       (K,)         the prompt of each block
block_start        (K,)         where the block starts in ``generated``
block_length       (K,)         tokens in the block (``n``, or fewer at EOS or the length cap)
fixed_points       (K, n)       the block's fixed point (= ``generated[start : start + length]``)
states             (S, n)       every state before a sweep, in sweep order; slots past the block's
                                length hold 0. The last slot of the first state is never a model
                                input inside the block and holds the fixed point's token.
state_block        (S,)         the block of each state
=================  ===========  =====================================================================

The safetensors metadata holds ``format`` (``jacobix-trajectories/1``), ``block_size``, ``init``
and ``model``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from jacobix.core.engine import SweepRecord
from jacobix.models.protocol import CausalLM
from jacobix.tokens.decoding import Decoding
from jacobix.tokens.generate import generate
from jacobix.tokens.proposers.basic import resolve_init
from jacobix.tokens.trajectory import UNSEEN, BlockTrajectory, split_blocks

FORMAT = "jacobix-trajectories/1"


@dataclass(frozen=True, kw_only=True)
class RepetitionFilter:
    """Cut a continuation at its first repetitive block (greedy loops such as "the shall the shall").

    A block is repetitive when more than ``max_repeated`` of the ``ngram``-grams ending inside it
    already occurred earlier in the continuation. CLLM's filter (one token ten times in a row)
    misses loops longer than one token.
    """

    ngram: int = 8
    max_repeated: float = 0.5

    def __post_init__(self) -> None:
        if self.ngram < 1 or not 0 <= self.max_repeated <= 1:
            raise ValueError(f"RepetitionFilter needs ngram >= 1 and max_repeated in [0, 1], got {self}")

    def first_repetitive_block(self, tokens: list[int], starts: list[int], lengths: list[int]) -> int | None:
        """Index of the first repetitive block among blocks ``tokens[start : start + length]``, or None."""
        seen: set[tuple[int, ...]] = set()
        repeated = [False] * len(tokens)
        for end in range(self.ngram, len(tokens) + 1):
            gram = tuple(tokens[end - self.ngram : end])
            repeated[end - 1] = gram in seen
            seen.add(gram)
        for index, (start, length) in enumerate(zip(starts, lengths)):
            ends = range(max(start, self.ngram - 1), start + length)
            if len(ends) and sum(repeated[e] for e in ends) / len(ends) > self.max_repeated:
                return index
        return None


@dataclass(frozen=True, kw_only=True)
class CollectConfig:
    """How trajectories are collected.

    Attributes:
        block_size: tokens per block (``n``; CLLM uses 16).
        max_new_tokens: tokens generated per prompt.
        batch_size: prompts decoded together.
        eos_token_id: stop a row at any of these tokens.
        seed: seed of the draft init.
        repetition: the repetition filter, or None to keep everything.
        init: the draft rule of a fresh block, by name (see :func:`~jacobix.tokens.proposers.basic.resolve_init`);
            decode the student with the same rule. ``"context"`` is CLLM's; for action chunks
            ``"row-above"`` with ``row_length`` = action dimensions drafts each action from the one before.
        row_length: tokens per row, for ``init="row-above"``.
    """

    block_size: int = 16
    max_new_tokens: int = 256
    batch_size: int = 32
    eos_token_id: tuple[int, ...] = ()
    seed: int = 0
    repetition: RepetitionFilter | None = RepetitionFilter()
    init: str = "context"
    row_length: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.init, str):
            raise ValueError(f"CollectConfig.init must be a draft rule's name (it is stored in the file), got {self.init!r}")
        resolve_init(self.init, row_length=self.row_length)  # a clear error for an unknown rule
        if self.block_size < 2:
            raise ValueError(f"block_size must be >= 2 tokens (a block of 1 is sequential decoding), got {self.block_size}")
        if self.max_new_tokens < self.block_size + 1:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) must exceed block_size ({self.block_size}): "
                             "the first token comes from the prefill, then whole blocks follow")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def decoding(self) -> Decoding:
        """The teacher's greedy Jacobi in block mode, as the student will be decoded."""
        return Decoding(method="jacobi", window=self.block_size, init=self.init, block=True, row_length=self.row_length)


@dataclass(frozen=True)
class Trajectories:
    """Collected trajectories; the tensors of the file format in the module docstring."""

    prompts: Tensor
    prompt_length: Tensor
    generated: Tensor
    generated_length: Tensor
    truth: Tensor
    truth_length: Tensor
    block_prompt: Tensor
    block_start: Tensor
    block_length: Tensor
    fixed_points: Tensor
    states: Tensor
    state_block: Tensor
    block_size: int
    init: str = "context"
    model: str = ""

    def __post_init__(self) -> None:
        k, s = len(self.block_prompt), len(self.states)
        if k == 0 or s == 0:
            raise ValueError("trajectories hold no blocks: collect from more prompts, or loosen the repetition filter")
        if self.fixed_points.shape != (k, self.block_size) or self.states.shape[1:] != (self.block_size,):
            raise ValueError(f"trajectories: fixed_points {tuple(self.fixed_points.shape)} and states "
                             f"{tuple(self.states.shape)} must both have block_size={self.block_size} columns")
        for name in ("block_start", "block_length"):
            if len(getattr(self, name)) != k:
                raise ValueError(f"trajectories: {name} has {len(getattr(self, name))} entries for {k} blocks")
        if len(self.state_block) != s or int(self.state_block.max()) >= k or int(self.state_block.min()) < 0:
            raise ValueError("trajectories: state_block must give one valid block index per state")
        if int(torch.bincount(self.state_block, minlength=k).min()) == 0:
            raise ValueError("trajectories: every block needs at least one state before its fixed point")
        grouped = bool((self.state_block[1:] >= self.state_block[:-1]).all())  # as collect writes them
        starts = torch.searchsorted(self.state_block, torch.arange(k + 1)) if grouped else None  # (K + 1,)
        object.__setattr__(self, "_starts", starts)
        for name in ("generated", "truth", "prompts"):
            if len(getattr(self, name)) != len(self.prompt_length):
                raise ValueError(f"trajectories: {name} has {len(getattr(self, name))} rows for "
                                 f"{len(self.prompt_length)} prompts")

    def context(self, block: int) -> Tensor:
        """(L,) the tokens before a block: its prompt, then the generated text before it."""
        p = int(self.block_prompt[block])
        prompt = self.prompts[p, : int(self.prompt_length[p])]
        return torch.cat([prompt, self.generated[p, : int(self.block_start[block])]])

    def states_of(self, block: int) -> Tensor:
        """(J, n) the states of one block in sweep order (the fixed point not included)."""
        if self._starts is None:  # not stored block by block: scan
            return self.states[self.state_block == block]
        return self.states[int(self._starts[block]) : int(self._starts[block + 1])]


def collect(model: CausalLM, prompts: list[Tensor], truths: list[Tensor], config: CollectConfig = CollectConfig(),
            *, name: str = "") -> Trajectories:
    """Decode every prompt in block mode and keep each block's states (see the module docstring).

    Args:
        model: the model whose trajectories to collect (the teacher; CLLM's student starts as it).
        prompts: token ids of each prompt (1-D tensors).
        truths: the ground-truth continuation of each prompt, for the AR loss.
        config: block size, lengths, batching, filter.
        name: the model's name, stored in the file.
    Returns:
        the trajectories of the blocks kept by the repetition filter.
    """
    if len(prompts) != len(truths):
        raise ValueError(f"collect: {len(prompts)} prompts but {len(truths)} ground-truth continuations; give one each")
    if not prompts:
        raise ValueError("collect: no prompts given")
    rows: list[_Row] = []
    generator = torch.Generator().manual_seed(config.seed)
    for begin in range(0, len(prompts), config.batch_size):
        batch = prompts[begin : begin + config.batch_size]
        result = generate(model, batch, config.decoding, record=True, max_new_tokens=config.max_new_tokens,
                          generator=generator, eos_token_id=list(config.eos_token_id) or None)
        lengths = torch.tensor([len(p) for p in batch])
        rows += _rows(result.trajectory, result.tokens, lengths, config)
    return _assemble(prompts, truths, rows, config, name)


@dataclass
class _Row:
    generated: Tensor  # (G,) the continuation, cut after the last kept block
    blocks: list[BlockTrajectory]  # the kept blocks, in order


def _rows(records: list[SweepRecord], tokens: list[Tensor], prompt_length: Tensor, config: CollectConfig) -> list[_Row]:
    """Cut one batch's sweep records into blocks, apply the repetition filter, and fill unseen slots
    (never a model input inside their block) with the fixed point's tokens."""
    by_row: dict[int, list[BlockTrajectory]] = {row: [] for row in range(len(tokens))}
    for block in split_blocks(records, tokens, prompt_length, config.block_size):
        by_row[block.row].append(block)
    out = []
    for row, blocks in by_row.items():
        cut = None if config.repetition is None else config.repetition.first_repetitive_block(
            tokens[row].tolist(), [b.start for b in blocks], [b.length for b in blocks])
        blocks = [_filled(b) for b in blocks[:cut]]
        end = blocks[-1].start + blocks[-1].length if blocks else 1
        out.append(_Row(tokens[row][:end], blocks))
    return out


def _filled(block: BlockTrajectory) -> BlockTrajectory:
    fixed = block.fixed_point.clamp_min(0)  # (n,) padding past the block's length is 0
    states = torch.where(block.states == UNSEEN, fixed[None], block.states)  # (J, n)
    return BlockTrajectory(block.row, block.start, block.length, states, block.committed, fixed)


def _pad(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D tensors with 0 into (N, L) long and their lengths (N,)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.zeros(len(rows), max(int(lengths.max()), 1), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths


def _assemble(prompts: list[Tensor], truths: list[Tensor], rows: list[_Row], config: CollectConfig,
              name: str) -> Trajectories:
    n = config.block_size
    block_prompt, block_start, block_length, fixed, states, state_block = [], [], [], [], [], []
    for p, row in enumerate(rows):
        for block in row.blocks:
            fixed.append(block.fixed_point)
            states += list(block.states)
            state_block += [len(block_prompt)] * len(block.states)
            block_prompt.append(p)
            block_start.append(block.start)
            block_length.append(block.length)
    if not block_prompt:
        raise ValueError("collect: the repetition filter dropped every block; loosen it (max_repeated) or use other prompts")
    prompt_tokens, prompt_length = _pad(prompts)
    generated, generated_length = _pad([r.generated for r in rows])
    truth, truth_length = _pad(truths)
    long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return Trajectories(
        prompts=prompt_tokens, prompt_length=prompt_length, generated=generated, generated_length=generated_length,
        truth=truth, truth_length=truth_length, block_prompt=long(block_prompt), block_start=long(block_start),
        block_length=long(block_length), fixed_points=torch.stack(fixed), states=torch.stack(states),
        state_block=long(state_block), block_size=n, init=config.init, model=name,
    )


_META = ("block_size", "init", "model")


def save_trajectories(trajectories: Trajectories, path: str | Path) -> Path:
    """Write the trajectories as one safetensors file (format in the module docstring)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f.name: getattr(trajectories, f.name).contiguous() for f in fields(trajectories) if f.name not in _META}
    meta = {"format": FORMAT, **{k: json.dumps(getattr(trajectories, k)) for k in _META}}
    save_file(tensors, str(path), metadata=meta)
    return path


def load_trajectories(path: str | Path) -> Trajectories:
    """Read a file written by :func:`save_trajectories` (no code is executed)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trajectories file {path}; collect one with jacobix train cllm --collect-only")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a jacobix trajectories file (format {meta.get('format')!r}, "
                             f"expected {FORMAT!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return Trajectories(**tensors, **{k: json.loads(meta[k]) for k in _META})


__all__ = ["CollectConfig", "RepetitionFilter", "Trajectories", "collect", "load_trajectories", "save_trajectories"]
