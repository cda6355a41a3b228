"""Block-mode Jacobi trajectories, cut out of a recorded generation.

``generate(..., block=True, record=True)`` keeps one :class:`~jacobix.core.engine.SweepRecord` per
sweep. :func:`split_blocks` turns them into, per block, the state before every sweep and the fixed
point: what consistency distillation trains on, and what :func:`convergence_counts` reads to
count fast-forwarded and stationary tokens (CLLM, Table 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from jacobix.core.engine import SweepRecord

UNSEEN = -1  # a block slot that no sweep has fed yet (the last slot before the first sweep)


@dataclass(frozen=True)
class BlockTrajectory:
    """One block of one row.

    Attributes:
        row: the row of the batch.
        start: where the block starts among the row's new tokens (the first new token comes from
            the prefill, so blocks start at 1, 1 + n, ...).
        length: tokens in the block (n, or fewer at EOS or the length cap).
        states: (J, n) the block before each sweep: committed tokens, then the drafts fed;
            ``UNSEEN`` where no draft was fed; past ``length``: ``UNSEEN``.
        committed: (J,) block tokens committed before each sweep.
        fixed_point: (n,) the block's final tokens (``UNSEEN`` past ``length``).
    """

    row: int
    start: int
    length: int
    states: Tensor
    committed: Tensor
    fixed_point: Tensor


def split_blocks(records: list[SweepRecord], tokens: list[Tensor], prompt_length: Tensor,
                 block_size: int) -> list[BlockTrajectory]:
    """Cut a block-mode generation's sweep records into per-block trajectories.

    Args:
        records: ``result.trajectory`` of ``generate(..., block=True, record=True)``.
        tokens: ``result.tokens``, the new tokens of each row.
        prompt_length: (B,) prompt tokens per row.
        block_size: the ``window`` of that generation.
    Returns:
        the blocks, row by row, in order.
    """
    n = block_size
    states: dict[tuple[int, int], list[Tensor]] = {}
    committed: dict[tuple[int, int], list[int]] = {}
    for record in records:
        for row in torch.nonzero(record.n_commit > 0).flatten().tolist():
            done = int(record.start[row] - prompt_length[row])  # new tokens committed before the sweep
            block = (done - 1) // n  # block k holds new tokens 1 + k*n .. k*n + n
            begin = 1 + block * n
            end = min(begin + n, len(tokens[row]))
            state = torch.full((n,), UNSEEN, dtype=torch.long)
            state[: done - begin] = tokens[row][begin:done]
            drafts = record.drafts[row, : end - done]  # the guesses fed for the rest of the block
            state[done - begin : done - begin + len(drafts)] = drafts
            states.setdefault((row, block), []).append(state)
            committed.setdefault((row, block), []).append(done - begin)
    out = []
    for row, block in sorted(states):
        begin = 1 + block * n
        length = min(n, len(tokens[row]) - begin)
        fixed = torch.full((n,), UNSEEN, dtype=torch.long)
        fixed[:length] = tokens[row][begin : begin + length]
        out.append(BlockTrajectory(row=row, start=begin, length=length, states=torch.stack(states[(row, block)]),
                                   committed=torch.tensor(committed[(row, block)]), fixed_point=fixed))
    return out


def convergence_counts(block: BlockTrajectory) -> tuple[int, int]:
    """Fast-forwarded and stationary tokens of one block (CLLM, section 4.3 and Table 3).

    - fast-forwarded: tokens a sweep committed beyond the one token every sweep commits.
    - stationary: tokens that already held their final value while an earlier slot of the block
      was still wrong, and kept it through every later sweep.
    """
    trajectory = torch.cat([block.states, block.fixed_point[None]])[:, : block.length]  # (J + 1, len)
    right = trajectory == block.fixed_point[None, : block.length]  # (J + 1, len)
    commits = torch.cat([block.committed, torch.tensor([block.length])])  # (J + 1,)
    fast_forwarded = int((commits.diff() - 1).clamp_min(0).sum())
    stays = right.flip(0).long().cumprod(0).flip(0).bool()  # (J + 1, len) right from this sweep on
    first = (~stays).sum(0)  # (len,) the sweep from which each slot stays right
    stationary = 0
    for slot in range(block.length):
        t = int(first[slot])
        if t < len(block.states) and slot >= int(block.committed[t]) and not bool(right[t, :slot].all()):
            stationary += 1
    return fast_forwarded, stationary


__all__ = ["UNSEEN", "BlockTrajectory", "convergence_counts", "split_blocks"]
