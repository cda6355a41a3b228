"""A transformers causal LM as a jacobix :class:`~jacobix.models.protocol.CausalLM`.

:class:`HFCausalLM` drives the model with the position-indexed cache of
:mod:`jacobix.integrations.hf.cache`: every forward passes an explicit 4-D attention mask and
per-row ``position_ids``, so rollback is an index move and rows of a batch keep their own
lengths. The cache API is feature-detected (``CacheLayerMixin``, ``Cache(layers=...)``, the
forward keyword ``cache=`` of 5.x or ``past_key_values=`` of 4.x); models whose cache cannot be
rewound by position (hybrid sliding/full layers, linear attention, recurrent state, encoder-
decoder) are refused with a message. Tested with transformers 5.24.0 (benchmarked on 5.17.0 too).
"""

from __future__ import annotations

import copy

import inspect
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from jacobix.integrations.hf._deps import require_transformers
from jacobix.integrations.hf.cache import UNKNOWN_TOKEN, PositionCacheMethods, cache_classes
from jacobix.models.protocol import LMOutput

FULL, SLIDING = "DynamicLayer", "DynamicSlidingWindowLayer"


def _layer_kinds(config: Any) -> list[str]:
    """Class names of the cache layers transformers would build for ``config`` (feature detection)."""
    from transformers.cache_utils import DynamicCache

    try:
        probe = DynamicCache(config=config)
    except TypeError as error:
        raise ValueError(f"this transformers' DynamicCache takes no config ({error}); jacobix needs transformers>=4.56") from error
    return [type(layer).__name__ for layer in probe.layers]


def check_supported(model: Any) -> int | None:
    """Raise ValueError unless ``model``'s attention cache can be rewound by position; return its sliding window.

    Full attention is supported; a sliding window is supported when every layer uses the same one
    (the window goes into the mask). Hybrid, linear-attention, recurrent and encoder-decoder
    models are refused: rolling back their state after a rejected draft is not an index move.
    """
    require_transformers()
    config = getattr(model, "config", None)
    name = type(model).__name__
    if config is None or not callable(getattr(model, "forward", None)):
        raise ValueError(f"{name} is not a transformers model (no .config/.forward)")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{name} is an encoder-decoder model; jacobix decodes causal LMs only")
    kinds = set(_layer_kinds(config)) or {FULL}
    if kinds == {FULL}:
        return None
    if kinds == {SLIDING}:
        return int(config.get_text_config(decoder=True).sliding_window)
    raise ValueError(
        f"{name} uses cache layers {sorted(kinds)}: jacobix can only roll back full-attention caches (or one "
        "sliding window shared by all layers); hybrid, linear-attention and recurrent caches are not supported"
    )


class HFCausalLM:
    """A transformers causal LM as a jacobix :class:`~jacobix.models.protocol.CausalLM`.

    Args:
        model: e.g. ``AutoModelForCausalLM.from_config(...)``; put it in eval mode yourself.
    """

    def __init__(self, model: Any) -> None:
        self.sliding_window = check_supported(model)
        self.model = model
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        config = model.config.get_text_config(decoder=True)
        self.num_layers = int(config.num_hidden_layers)
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        parameters = inspect.signature(model.forward).parameters
        self.cache_keyword = "cache" if "cache" in parameters else "past_key_values"
        if self.cache_keyword not in parameters or "position_ids" not in parameters:
            raise ValueError(f"{type(model).__name__}.forward takes no cache/past_key_values and position_ids")
        self.last_cache = None

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.model.parameters()

    def calling(self, module: Any) -> HFCausalLM:
        """This adapter, calling ``module`` instead, e.g. the model wrapped by DDP for training
        (a wrapper's ``forward(*args, **kwargs)`` hides the signature the constructor checks)."""
        adapter = copy.copy(self)
        adapter.model = module
        return adapter

    def new_cache(self, batch_size: int, capacity: int) -> PositionCacheMethods:
        """An empty position-indexed cache of ``batch_size`` rows and ``capacity`` positions."""
        if self.max_positions is not None and capacity > int(self.max_positions):
            raise ValueError(
                f"prompt + max_new_tokens + window needs {capacity} positions but the model has "
                f"{self.max_positions}; shorten the prompt or lower max_new_tokens"
            )
        position_cache, _ = cache_classes()
        return position_cache(self.num_layers, batch_size, capacity, self.sliding_window)

    def embed(self, tokens: Tensor) -> Tensor:
        """Input embeddings (B, W, E) of ``tokens`` (B, W): the model's ``get_input_embeddings()``."""
        return self.model.get_input_embeddings()(tokens)  # (B, W, E)

    def forward(self, tokens: Tensor | None, positions: Tensor, cache: PositionCacheMethods | None = None, *,
                embeds: Tensor | None = None, return_hidden: bool = False, tree: Tensor | None = None) -> Tensor | LMOutput:
        """Logits (B, W, V) of a window, or an :class:`~jacobix.models.protocol.LMOutput` when ``return_hidden``.

        Args:
            tokens: (B, W) token ids; may be None when ``embeds`` is given. With ``embeds`` and no
                ids the cache records :data:`~jacobix.integrations.hf.cache.UNKNOWN_TOKEN` (-1) as
                the token of those positions (logits processors then refuse to run on them).
            positions: (B, W) absolute positions; keys and values go to those slots of ``cache``.
            cache: from :meth:`new_cache`, or None for a cache-free causal pass over the window
                (query ``j`` sees window entries ``0..j``, within the sliding window if any).
            embeds: (B, W, E) input embeddings passed as ``inputs_embeds`` instead of ``tokens``.
            return_hidden: also return transformers' ``hidden_states``: the embeddings, then each
                layer's output, the last after the final norm.
            tree: (W, W) bool, the window is a draft tree (:mod:`jacobix.core.tree`), passed to the
                model as a 4-D mask; token i is written at slot ``positions[:, 0] + i``. With a cache it
                needs full attention. Without a cache it may be (B, 1, W, W), one per row: any
                visibility mask, such as the packed sequences of :mod:`jacobix.train.jacobi_forcing`.
        """
        if tokens is None and embeds is None:
            raise ValueError("forward needs tokens or embeds")
        if tree is not None and cache is not None and self.sliding_window is not None:
            raise ValueError(f"{type(self.model).__name__}: draft trees (Decoding.tree) need full attention; this model "
                             "attends through a sliding window, so decode it without Decoding.tree")
        dtype = next(self.model.parameters()).dtype
        if cache is None:
            mask, caching = self._window_mask(positions, dtype, tree), dict(use_cache=False)  # (B, 1, W, W)
        else:
            self.last_cache = cache
            recorded = tokens if tokens is not None else torch.full_like(positions, UNKNOWN_TOKEN)  # (B, W)
            mask = cache.begin(recorded, positions, dtype, tree)  # (B, 1, W, kv)
            caching = {"use_cache": True, self.cache_keyword: cache}
        out = self._run(tokens, embeds, positions, mask, caching, return_hidden)
        if cache is not None and cache.layers_written != self.num_layers:
            raise ValueError(
                f"{type(self.model).__name__} wrote {cache.layers_written} of {self.num_layers} cache layers through "
                "Cache.update; jacobix cannot drive this architecture's cache"
            )
        if return_hidden:
            return LMOutput(logits=out.logits, hidden_states=tuple(out.hidden_states))
        return out.logits  # (B, W, V)

    def _run(self, tokens: Tensor | None, embeds: Tensor | None, positions: Tensor, mask: Tensor,
             caching: dict[str, Any], return_hidden: bool) -> Any:
        """The transformers forward of one window (an output with ``.logits``); subclasses that read
        another head or embedding table (image generation) override this one call."""
        inputs = dict(input_ids=tokens) if embeds is None else dict(inputs_embeds=embeds)
        extra = dict(output_hidden_states=True) if return_hidden else {}
        return self.model(**inputs, position_ids=positions, attention_mask=mask, **caching, **extra)

    def _window_mask(self, positions: Tensor, dtype: torch.dtype, visible: Tensor | None = None) -> Tensor:
        """Additive mask (B, 1, W, W) of a window attending only to itself: causal, or what ``visible``
        ((W, W) or (B, 1, W, W) bool) allows; a sliding window also applies, by position."""
        b, w = positions.shape
        if visible is None:
            visible = torch.ones(w, w, dtype=torch.bool, device=positions.device).tril()  # (W, W)
        visible = visible.to(positions.device).expand(b, 1, w, w)  # (B, 1, W, W)
        if self.sliding_window is not None:
            visible = visible & (positions[:, None, None, :] > positions[:, None, :, None] - self.sliding_window)
        mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
        return mask.masked_fill_(~visible, torch.finfo(dtype).min)


def as_causal_lm(model: Any) -> HFCausalLM:
    """Wrap a transformers model (refusing unsupported caches); jacobix models pass through unchanged."""
    return model if isinstance(model, HFCausalLM) else HFCausalLM(model)


def is_transformers_model(model: Any) -> bool:
    """True for transformers ``PreTrainedModel`` instances (without importing transformers otherwise)."""
    return any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


class HFProcessors:
    """Applies transformers ``LogitsProcessor``s at every window position, as transformers would.

    A transformers processor reads ``(input_ids, scores)`` for the whole batch (some keep per-row
    state). At window slot ``j`` a row has generated ``t = new_positions[b, j]`` tokens before
    it; its ``input_ids`` are then its padded prompt plus those ``t`` tokens: the drafts before
    ``j`` count as generated, exactly the context of that slot's logits. Rows at the same ``t``
    share one call; the other rows of that call are filled with padding and ignored.

    Args:
        lm: the adapter (its last cache holds the token of every position).
        processors: transformers logits processors.
        padded_prompts: (B, L) the prompts as transformers holds them (left padding included).
        prompt_length: (B,) unpadded prompt lengths.
        pad_token_id: filler for rows outside a call.
    """

    def __init__(self, lm: HFCausalLM, processors: Sequence[Any], padded_prompts: Tensor, prompt_length: Tensor,
                 pad_token_id: int) -> None:
        self.lm, self.processors = lm, list(processors)
        self.padded, self.prompt_length, self.pad = padded_prompts, prompt_length.tolist(), pad_token_id

    def __call__(self, logits: Tensor, new_positions: Tensor) -> Tensor:
        b, w, _ = logits.shape
        history = self.lm.last_cache.tokens[:b].to(self.padded.device)  # (B, capacity) token ids by position
        # Slots past a row's limit are never committed and have no cache room: pad their history.
        history = torch.nn.functional.pad(history, (0, w), value=self.pad)  # (B, capacity + W)
        steps = new_positions.tolist()
        out = logits.clone()
        for j in range(w):
            for t in sorted({steps[row][j] for row in range(b)}):
                rows = [row for row in range(b) if steps[row][j] == t]
                generated = self.padded.new_full((b, t), self.pad)  # (B, t)
                for row in rows:
                    generated[row] = history[row, self.prompt_length[row] : self.prompt_length[row] + t]
                if bool((generated == UNKNOWN_TOKEN).any()):
                    raise ValueError("logits processors need token ids; a forward fed embeds without tokens")
                scores = out[:, j].float()  # (B, V)
                for processor in self.processors:
                    scores = processor(torch.cat([self.padded, generated], 1), scores)
                out[rows, j] = scores[rows].to(out.dtype)
        return out


__all__ = ["HFCausalLM", "HFProcessors", "as_causal_lm", "check_supported", "is_transformers_model"]
