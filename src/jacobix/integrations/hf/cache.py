"""A transformers ``Cache`` written by absolute position, so that rollback is an index move.

Each layer keeps keys and values (B, H_kv, capacity, head_dim) and writes a window at slot =
absolute position of each row, like :mod:`jacobix.core.cache`; it hands attention the buffer
up to the largest position of the window, and :meth:`PositionCacheMethods.begin` builds the
matching additive 4-D mask (a query sees the slots at or before its own position). The
transformers base classes are only known once transformers is imported, so the behaviour
lives in two plain mixins and :func:`cache_classes` joins them to ``CacheLayerMixin`` and
``Cache`` on first use.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from jacobix.core.cache import slot_mask, tree_slot_mask, tree_slots
from jacobix.integrations.hf._deps import require_transformers

UNKNOWN_TOKEN = -1  # token history of a position fed by ``embeds`` without token ids


class PositionLayerMethods:
    """One layer's keys/values (B, H_kv, capacity, head_dim), written at the owner's positions."""

    is_compileable, is_croppable, is_sliding = False, False, False

    def __init__(self, owner: PositionCacheMethods) -> None:
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        b, h, _, d = key_states.shape
        self.keys = key_states.new_zeros(b, h, self.owner.capacity, d)
        self.values = value_states.new_zeros(b, h, self.owner.capacity, value_states.shape[-1])
        self.device, self.is_initialized = key_states.device, True

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        positions = self.owner.positions  # (B, W)
        b, h, w, _ = key_states.shape
        self.keys.scatter_(2, positions[:, None, :, None].expand(b, h, w, self.keys.shape[-1]), key_states)
        self.values.scatter_(2, positions[:, None, :, None].expand(b, h, w, self.values.shape[-1]), value_states)
        self.owner.layers_written += 1
        n = self.owner.kv_length
        return self.keys[:, :, :n], self.values[:, :, :n]  # (B, H_kv, n, head_dim) each

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.kv_length, 0

    def get_seq_length(self) -> int:
        return self.owner.kv_length

    def get_max_length(self) -> int:
        return self.owner.capacity


class PositionCacheMethods:
    """jacobix's cache API on a transformers ``Cache``: slots are absolute positions per row.

    ``tokens`` (B, capacity) records the token id written at each position (``UNKNOWN_TOKEN``
    where a forward got ``embeds`` and no ids); logits processors read their context from it.
    """

    layer_class: type

    def __init__(self, num_layers: int, batch_size: int, capacity: int, sliding_window: int | None) -> None:
        self.capacity, self.sliding_window = capacity, sliding_window
        self.positions: Tensor | None = None
        self.kv_length, self.layers_written = 0, 0
        self.tokens = torch.zeros(batch_size, capacity, dtype=torch.long)  # (B, capacity) token ids by position
        self.lengths = torch.zeros(batch_size, dtype=torch.long)
        super().__init__(layers=[self.layer_class(self) for _ in range(num_layers)])

    def begin(self, tokens: Tensor, positions: Tensor, dtype: torch.dtype, tree: Tensor | None = None) -> Tensor:
        """Record the window (B, W) and return its additive attention mask (B, 1, W, kv_length).

        With ``tree`` (W, W) bool the window is a draft tree (:mod:`jacobix.core.tree`): token i is
        written at slot ``positions[:, 0] + i`` and sees the slots before the root's and its ancestors."""
        slots = positions if tree is None else tree_slots(positions)
        self.positions, self.layers_written = slots, 0
        self.kv_length = int(slots.max()) + 1  # the one host sync of a forward
        if self.tokens.device != positions.device:
            self.tokens, self.lengths = self.tokens.to(positions.device), self.lengths.to(positions.device)
        self.tokens.scatter_(1, slots, tokens)
        if tree is not None:
            visible = tree_slot_mask(slots[:, 0], tree, self.kv_length)  # (B, 1, W, kv)
        else:
            visible = slot_mask(positions, self.kv_length)  # (B, 1, W, kv)
            if self.sliding_window is not None:
                every = torch.arange(self.kv_length, device=positions.device)
                visible &= every[None, None, None, :] > positions[:, None, :, None] - self.sliding_window
        mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
        return mask.masked_fill_(~visible, torch.finfo(dtype).min)

    def rollback(self, lengths: Tensor) -> None:
        """Declare each row's valid prefix ``lengths`` (B,) long; later writes overwrite the rest."""
        self.lengths = lengths.to(self.lengths.device).clone()

    def narrow_rows(self, rows: int) -> PositionCacheMethods:
        """The first ``rows`` rows as a cache of their own that shares this one's storage (no copy).

        Needs the layers initialized (after the prompt's prefill)."""
        view = type(self)(len(self.layers), rows, self.capacity, self.sliding_window)
        view.tokens, view.lengths = self.tokens[:rows], self.lengths[:rows]
        for mine, theirs in zip(view.layers, self.layers):
            if not theirs.is_initialized:
                raise ValueError("narrow_rows needs an initialized cache: prefill it first")
            mine.keys, mine.values = theirs.keys[:rows], theirs.values[:rows]
            mine.device, mine.is_initialized = theirs.device, True
        return view

    def copy_slots(self, source_rows: Tensor, positions: Tensor) -> None:
        """Row ``i`` takes row ``source_rows[i]``'s keys, values and tokens at ``positions[i]``, in this cache.

        Args:
            source_rows: (R,) long, R <= batch size; rows ``0 .. R-1`` are written.
            positions: (R, P) long absolute positions.

        Example: ``copy_slots(tensor([0, 0]), tensor([[0, 1, 2], [0, 1, 2]]))`` gives row 1 row 0's
        first three slots (row 0 copies onto itself), so both rows then continue from one prefix.
        """
        self.copy_slots_from(self, source_rows, positions)

    def move_slots(self, source: Tensor, target: Tensor) -> None:
        """Row ``i`` copies its own keys, values and tokens at slots ``source[i]`` (B, P) to ``target[i]``."""
        rows = torch.arange(len(source), device=source.device)[:, None]  # (B, 1)
        for layer in self.layers:
            if layer.is_initialized:
                for buffer in (layer.keys, layer.values):  # (B, H, C, hd)
                    view = buffer.transpose(1, 2)  # (B, C, H, hd)
                    view[rows, target] = view[rows, source].clone()
        self.tokens = self.tokens.to(source.device)
        self.tokens[rows, target] = self.tokens[rows, source].clone()

    def copy_slots_from(self, source: PositionCacheMethods, source_rows: Tensor, positions: Tensor) -> None:
        """Row ``i`` takes ``source`` row ``source_rows[i]``'s keys, values and tokens at ``positions[i]`` (R, P)."""
        if positions.shape[1] == 0 or not source.layers[0].is_initialized:
            return
        for mine, theirs in zip(self.layers, source.layers):
            if not mine.is_initialized:
                shape = (len(source_rows), theirs.keys.shape[1], 1, theirs.keys.shape[-1])
                mine.lazy_initialization(theirs.keys.new_zeros(shape), theirs.values.new_zeros(shape))
            for buffer, origin in ((mine.keys, theirs.keys), (mine.values, theirs.values)):
                # advanced indexing copies, so source may be this very cache
                taken = origin.transpose(1, 2)[source_rows[:, None], positions].transpose(1, 2)  # (R, H, P, hd)
                index = positions[:, None, :, None].expand_as(taken)
                buffer.scatter_(2, index, taken)
        self.tokens = self.tokens.to(positions.device)
        self.tokens.scatter_(1, positions, source.tokens.to(positions.device)[source_rows].gather(1, positions))


@functools.cache
def cache_classes() -> tuple[type, type]:
    """``(PositionCache, PositionLayer)``: the mixins joined to the installed transformers' base classes."""
    require_transformers()
    try:
        from transformers.cache_utils import Cache, CacheLayerMixin
    except ImportError as error:
        raise ImportError(
            "this transformers has no transformers.cache_utils.CacheLayerMixin; jacobix needs transformers>=4.56"
        ) from error
    layer = type("PositionLayer", (PositionLayerMethods, CacheLayerMixin), {"__module__": __name__})
    cache = type("PositionCache", (PositionCacheMethods, Cache), {"__module__": __name__, "layer_class": layer})
    return cache, layer


__all__ = ["UNKNOWN_TOKEN", "PositionCacheMethods", "PositionLayerMethods", "cache_classes"]
