"""What jacobix needs of a token model: the :class:`CausalLM` protocol and its cache.

A model owns no decoding loop. ``forward`` maps a window of inputs at given absolute positions
to logits, writing keys and values into the cache it is handed; the cache is written by
absolute position, so rolling back after a rejected draft is an index move. jacobix's own
:class:`~jacobix.models.llama.Llama` and the transformers adapter
(:mod:`jacobix.integrations.hf`) implement it.

Two keyword seams serve the methods that feed or read continuous vectors (SJD2's noisy
embeddings, PCCoT's latent thoughts); their defaults change nothing:

- ``embeds=`` (B, W, E) input embeddings used in place of the embeddings of ``tokens``;
  ``forward(tokens, p, c, embeds=model.embed(tokens))`` gives bit-identical logits to
  ``forward(tokens, p, c)``.
- ``return_hidden=True`` returns an :class:`LMOutput` with every layer's hidden states.

A model whose prompts hold ids it never predicts (a text prompt before image codes, as Janus's image
head) may set ``input_vocab_size``; prompts are then checked against it instead of ``vocab_size``. A model
with a position limit may set ``max_positions`` (a cache may hold no more); timing passes for
``window="auto"`` then uses the room up to it rather than only the room of the generation at hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor


class Cache(Protocol):
    """A position-indexed key/value cache of ``batch_size`` rows."""

    def rollback(self, lengths: Tensor) -> None:
        """Declare each row's valid prefix ``lengths`` (B,) long; later writes overwrite the rest."""
        ...

    def copy_slots(self, source_rows: Tensor, positions: Tensor) -> None:
        """Row ``i`` takes row ``source_rows[i]``'s keys and values at ``positions[i]`` (B, P)."""
        ...


@dataclass(frozen=True)
class LMOutput:
    """Logits and hidden states of one forward (``return_hidden=True``).

    Attributes:
        logits: (B, W, V).
        hidden_states: ``num_layers + 1`` tensors (B, W, dim): the input embeddings, then the
            output of each layer; the last one after the final norm (transformers' convention).
    """

    logits: Tensor
    hidden_states: tuple[Tensor, ...]


@runtime_checkable
class CausalLM(Protocol):
    """A causal token model with an explicit, position-indexed cache."""

    vocab_size: int

    def new_cache(self, batch_size: int, capacity: int) -> Cache:
        """An empty cache for ``batch_size`` rows of up to ``capacity`` positions."""
        ...

    def embed(self, tokens: Tensor) -> Tensor:
        """Input embeddings (B, W, E) of tokens (B, W), exactly as ``forward`` computes them."""
        ...

    def forward(
        self,
        tokens: Tensor | None,
        positions: Tensor,
        cache: Cache | None = None,
        *,
        embeds: Tensor | None = None,
        return_hidden: bool = False,
    ) -> Tensor | LMOutput:
        """Logits (B, W, V) of a window, or an :class:`LMOutput` when ``return_hidden``.

        Args:
            tokens: (B, W) token ids; may be None when ``embeds`` is given.
            positions: (B, W) absolute positions; the cache is written there.
            cache: the model's cache, or None for a cache-free causal pass.
            embeds: (B, W, E) input embeddings used instead of the embeddings of ``tokens``.
            return_hidden: also return every layer's hidden states.
        """
        ...


__all__ = ["Cache", "CausalLM", "LMOutput"]
