"""A preallocated, position-indexed key/value cache.

Every row writes its keys and values at the slot equal to the token's absolute position, and
queries attend to the slots at or before their own position. Two facts follow:

- Rollback is an index move. Slots after a row's committed prefix may hold keys of rejected
  drafts, but a query at position ``t`` never sees slots after ``t``, and the next window
  overwrites slots ``t' <= t`` before any query reads them. ``rollback`` only records the length.
- Rows are independent. Each row has its own length, so prompts of different lengths need no
  padding tricks and rows of a batch accept different numbers of tokens per sweep.
"""

from __future__ import annotations

import torch
from torch import Tensor


def slot_mask(positions: Tensor, span: int) -> Tensor:
    """Boolean mask (B, 1, W, span): a query at ``positions`` (B, W) sees the slots at or before it."""
    slots = torch.arange(span, device=positions.device)
    return slots[None, None, None, :] <= positions[:, None, :, None]


def tree_slots(positions: Tensor) -> Tensor:
    """(B, N) slots of a draft tree's nodes (:mod:`jacobix.core.tree`): consecutive from the root's,
    ``positions[:, 0]``, so trunk nodes land at their own positions and branch nodes past the trunk."""
    return positions[:, :1] + torch.arange(positions.shape[1], device=positions.device)


def tree_slot_mask(root_slot: Tensor, ancestors: Tensor, span: int) -> Tensor:
    """Boolean mask (B, 1, N, span) of a tree window written at slots ``root_slot + i``.

    Args:
        root_slot: (B,) the slot of each row's first node (the root).
        ancestors: (N, N) bool, node i sees node j (j is i or an ancestor of i).
        span: slots covered.
    A node sees the committed slots before the root and, from the window, its ancestors only.
    """
    n = ancestors.shape[0]
    offset = torch.arange(span, device=root_slot.device)[None, :] - root_slot[:, None]  # (B, S)
    inside = (offset >= 0) & (offset < n)
    window = ancestors.to(root_slot.device)[:, offset.clamp(0, n - 1)]  # (N, B, S)
    return ((offset < 0)[:, None, :] | (inside[:, None, :] & window.transpose(0, 1)))[:, None]  # (B, 1, N, S)


class KVCache:
    """Keys and values of every layer, written by absolute position.

    Args:
        num_layers: number of attention layers.
        batch_size: number of rows.
        num_kv_heads: key/value heads per layer.
        capacity: slots per row; the largest position written must be below it.
        head_dim: size of one head.
        dtype, device: of the buffers.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (num_layers, batch_size, num_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        self.capacity = capacity

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def write(self, layer: int, positions: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k`` and ``v`` at ``positions`` and return the layer's whole cache.

        Args:
            layer: layer index.
            positions: (B, W) absolute position of each window token.
            k, v: (B, H_kv, W, head_dim).
        Returns:
            keys and values of the layer, each (B, H_kv, capacity, head_dim).
        """
        b, h, w, d = k.shape
        index = positions[:, None, :, None].expand(b, h, w, d)  # (B, H_kv, W, D)
        self.keys[layer].scatter_(2, index, k)
        self.values[layer].scatter_(2, index, v)
        return self.keys[layer], self.values[layer]

    def attention_mask(self, positions: Tensor, span: int | None = None) -> Tensor:
        """Boolean mask (B, 1, W, span): a query sees the slots at or before its position (of the first
        ``span``, by default all)."""
        return slot_mask(positions, self.capacity if span is None else span)

    def tree_mask(self, root_slot: Tensor, ancestors: Tensor, span: int | None = None) -> Tensor:
        """:func:`tree_slot_mask` over the first ``span`` slots (by default all)."""
        return tree_slot_mask(root_slot, ancestors, self.capacity if span is None else span)

    def move_slots(self, source: Tensor, target: Tensor) -> None:
        """Row ``i`` copies its own keys and values at slots ``source[i]`` (B, P) to ``target[i]``
        (the accepted path of a draft tree moved to its positions)."""
        rows = torch.arange(len(source), device=source.device)[:, None]  # (B, 1)
        for buffer in (self.keys, self.values):  # (L, B, H, C, hd)
            view = buffer.permute(1, 3, 0, 2, 4)  # (B, C, L, H, hd)
            view[rows, target] = view[rows, source].clone()

    def narrow_rows(self, rows: int) -> KVCache:
        """The first ``rows`` rows as a cache of their own that shares this one's storage (no copy)."""
        view = KVCache.__new__(KVCache)
        view.keys, view.values = self.keys[:, :rows], self.values[:, :rows]
        view.lengths, view.capacity = self.lengths[:rows], self.capacity
        return view

    def copy_slots(self, source_rows: Tensor, positions: Tensor) -> None:
        """Row ``i`` takes row ``source_rows[i]``'s keys and values at ``positions[i]`` (B, P).

        Sibling rows that verify different candidates for one sequence share its committed prefix;
        after a pass the winner's newly committed slots are copied to the others.
        """
        rows = torch.arange(len(source_rows), device=positions.device)[:, None]  # (B, 1)
        for buffer in (self.keys, self.values):  # (L, B, H, C, hd)
            view = buffer.permute(1, 3, 0, 2, 4)  # (B, C, L, H, hd)
            view[rows, positions] = view[source_rows[:, None], positions]

    def rollback(self, lengths: Tensor) -> None:
        """Declare that each row's valid prefix is ``lengths`` slots long (constant time)."""
        self.lengths.copy_(lengths)
