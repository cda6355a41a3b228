"""The Hugging Face transformers adapter: the one module of jacobix that imports ``transformers``.

:class:`HFCausalLM` wraps a causal LM of transformers into jacobix's
:class:`~jacobix.tokens.problem.CausalLM`. Its cache is a transformers ``Cache`` whose layers write
keys and values at slot = absolute position of each row, like :mod:`jacobix.core.cache`, and return
the buffer up to the largest position of the window; every forward passes an explicit 4-D
attention mask (a query sees the slots at or before its own position) and per-row
``position_ids``. Rollback is therefore an index move and rows of a batch keep their own
lengths. The cache API is feature-detected (``CacheLayerMixin``, ``Cache(layers=...)``, the
forward keyword ``cache=`` of 5.x or ``past_key_values=`` of 4.x); models whose cache cannot be
rewound by position (hybrid sliding/full layers, linear attention, recurrent state, encoder-
decoder) are refused with a message. Tested with transformers 5.24.0 (benchmarked on 5.17.0 too).

The ``*_generate`` functions plug jacobix into ``hf_model.generate(custom_generate=...)``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'jacobix[hf]'  (transformers, gguf, accelerate)"
FULL, SLIDING = "DynamicLayer", "DynamicSlidingWindowLayer"


def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise ImportError(f"jacobix's Hugging Face adapter needs transformers: {INSTALL_HINT}") from error
    return transformers


@functools.cache
def _cache_classes() -> tuple[type, type]:
    """The position-indexed ``Cache`` and layer classes, built against the installed transformers."""
    _transformers()
    try:
        from transformers.cache_utils import Cache, CacheLayerMixin
    except ImportError as error:
        raise ImportError(
            "this transformers has no transformers.cache_utils.CacheLayerMixin; jacobix needs transformers>=4.56"
        ) from error

    class PositionLayer(CacheLayerMixin):
        """One layer's keys/values (B, H_kv, capacity, head_dim), written at absolute positions."""

        is_compileable, is_croppable, is_sliding = False, False, False

        def __init__(self, owner: PositionCache) -> None:
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

    class PositionCache(Cache):
        """A transformers ``Cache`` with jacobix's ``rollback``: slots are absolute positions per row."""

        def __init__(self, num_layers: int, batch_size: int, capacity: int, sliding_window: int | None) -> None:
            self.capacity, self.sliding_window = capacity, sliding_window
            self.positions: Tensor | None = None
            self.kv_length, self.layers_written = 0, 0
            self.tokens = torch.zeros(batch_size, capacity, dtype=torch.long)  # (B, capacity) token ids by position
            self.lengths = torch.zeros(batch_size, dtype=torch.long)
            super().__init__(layers=[PositionLayer(self) for _ in range(num_layers)])

        def begin(self, tokens: Tensor, positions: Tensor, dtype: torch.dtype) -> Tensor:
            """Record the window (B, W) and return its additive attention mask (B, 1, W, kv_length)."""
            self.positions, self.layers_written = positions, 0
            self.kv_length = int(positions.max()) + 1  # the one host sync of a forward
            if self.tokens.device != positions.device:
                self.tokens, self.lengths = self.tokens.to(positions.device), self.lengths.to(positions.device)
            self.tokens.scatter_(1, positions, tokens)
            slots = torch.arange(self.kv_length, device=positions.device)
            visible = slots[None, None, None, :] <= positions[:, None, :, None]  # (B, 1, W, kv)
            if self.sliding_window is not None:
                visible &= slots[None, None, None, :] > positions[:, None, :, None] - self.sliding_window
            mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
            return mask.masked_fill_(~visible, torch.finfo(dtype).min)

        def rollback(self, lengths: Tensor) -> None:
            """Declare each row's valid prefix ``lengths`` (B,) long; later writes overwrite the rest."""
            self.lengths = lengths.to(self.lengths.device).clone()

        def copy_slots_from(self, source: PositionCache, source_rows: Tensor, positions: Tensor) -> None:
            """Row ``i`` takes ``source`` row ``source_rows[i]``'s keys, values and tokens at ``positions[i]`` (R, P)."""
            if positions.shape[1] == 0 or not source.layers[0].is_initialized:
                return
            for mine, theirs in zip(self.layers, source.layers):
                if not mine.is_initialized:
                    shape = (len(source_rows), theirs.keys.shape[1], 1, theirs.keys.shape[-1])
                    mine.lazy_initialization(theirs.keys.new_zeros(shape), theirs.values.new_zeros(shape))
                for buffer, origin in ((mine.keys, theirs.keys), (mine.values, theirs.values)):
                    taken = origin.transpose(1, 2)[source_rows[:, None], positions].transpose(1, 2)  # (R, H, P, hd)
                    index = positions[:, None, :, None].expand_as(taken)
                    buffer.scatter_(2, index, taken)
            self.tokens = self.tokens.to(positions.device)
            self.tokens.scatter_(1, positions, source.tokens.to(positions.device)[source_rows].gather(1, positions))

    return PositionCache, PositionLayer


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
    _transformers()
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
    """A transformers causal LM as a jacobix :class:`~jacobix.tokens.problem.CausalLM`.

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

    def parameters(self):
        return self.model.parameters()

    def new_cache(self, batch_size: int, capacity: int):
        if self.max_positions is not None and capacity > int(self.max_positions):
            raise ValueError(
                f"prompt + max_new_tokens + window needs {capacity} positions but the model has "
                f"{self.max_positions}; shorten the prompt or lower max_new_tokens"
            )
        position_cache, _ = _cache_classes()
        return position_cache(self.num_layers, batch_size, capacity, self.sliding_window)

    def forward(self, tokens: Tensor, positions: Tensor, cache) -> Tensor:
        """Logits (B, W, V) of ``tokens`` (B, W) at ``positions`` (B, W); keys/values go to ``cache``."""
        self.last_cache = cache
        mask = cache.begin(tokens, positions, next(self.model.parameters()).dtype)  # (B, 1, W, kv)
        out = self.model(input_ids=tokens, position_ids=positions, attention_mask=mask, use_cache=True,
                         **{self.cache_keyword: cache})
        if cache.layers_written != self.num_layers:
            raise ValueError(
                f"{type(self.model).__name__} wrote {cache.layers_written} of {self.num_layers} cache layers through "
                "Cache.update; jacobix cannot drive this architecture's cache"
            )
        return out.logits  # (B, W, V)


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
                scores = out[:, j].float()  # (B, V)
                for processor in self.processors:
                    scores = processor(torch.cat([self.padded, generated], 1), scores)
                out[rows, j] = scores[rows].to(out.dtype)
        return out


def load_gguf_cached(gguf_path: Path, cache_dir: Path, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load a GGUF causal LM and its tokenizer; dequantised weights are cached as safetensors.

    The first call reads ``gguf_path`` (needs the ``gguf`` package; tens of seconds) and writes
    ``cache_dir`` (config, tokenizer, ``model.safetensors``); later calls read ``cache_dir``.
    Nothing is downloaded.
    """
    tf = _transformers()
    if not (cache_dir / "model.safetensors").exists():
        model = tf.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype)
        tokenizer = tf.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        _save_dequantised(model, tokenizer, cache_dir)
    model = tf.AutoModelForCausalLM.from_pretrained(cache_dir, dtype=dtype, local_files_only=True)
    tokenizer = tf.AutoTokenizer.from_pretrained(cache_dir, local_files_only=True)
    return model.eval(), tokenizer


def _save_dequantised(model: Any, tokenizer: Any, cache_dir: Path) -> None:
    """Write the dequantised model atomically: a half-written cache folder is never read."""
    import shutil
    import tempfile

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=cache_dir.name + ".", dir=cache_dir.parent))
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain floats now
    model.hf_quantizer = None
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    model.generation_config.save_pretrained(staging)
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    staging.rename(cache_dir)


def _split_processors(processors: Sequence[Any] | None) -> list[Any]:
    """Drop temperature/top-k/top-p warpers (jacobix applies them from GenerationConfig); keep the rest."""
    from transformers import generation as g

    mapped = tuple(getattr(g, n) for n in ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"))
    return [p for p in processors or () if not isinstance(p, mapped)]


def _single_eos(config: Any) -> int | None:
    eos = config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if len(set(eos)) > 1:
        raise ValueError(f"jacobix stops on one eos_token_id; generation_config has {eos}: set eos_token_id=<one id>")
    return eos[0] if eos else None


def _prompts(input_ids: Tensor, attention_mask: Tensor | None) -> list[Tensor]:
    """Per-row prompts (L_b,) with (left or right) padding removed by the attention mask."""
    if attention_mask is None:
        return list(input_ids)
    return [row[keep.bool()] for row, keep in zip(input_ids, attention_mask)]


def _stop_early(rows: list[Tensor], prompts: list[Tensor], criteria: Sequence[Any]) -> list[Tensor]:
    """Cut each row where a user StoppingCriteria first fires (they are pure functions of the prefix)."""
    out = []
    for prompt, row in zip(prompts, rows):
        cut = len(row)
        for n in range(1, len(row) + 1):
            ids = torch.cat([prompt, row[:n].to(prompt.device)])[None]  # (1, L + n)
            if any(bool(torch.as_tensor(c(ids, None)).any()) for c in criteria):
                cut = n
                break
        out.append(row[:cut])
    return out


def _hf_generate(model: Any, input_ids: Tensor, method: str, logits_processor: Any, stopping_criteria: Any,
                 generation_config: Any, options: dict[str, Any], model_kwargs: dict[str, Any]) -> Tensor:
    from transformers.generation import EosTokenCriteria, MaxLengthCriteria

    from jacobix.tokens.generate import generate

    config = generation_config if generation_config is not None else model.generation_config
    if config.num_beams not in (None, 1) or (config.num_return_sequences or 1) > 1 or config.return_dict_in_generate:
        raise ValueError("jacobix custom_generate returns one sequence per prompt: use num_beams=1, "
                         "num_return_sequences=1, return_dict_in_generate=False")
    if bool(config.do_sample) != (method == "sjd"):
        fix = "sjd_generate for do_sample=True" if config.do_sample else "jacobi_generate for greedy decoding"
        raise ValueError(f"custom_generate: use jacobix.integrations.hf.{fix}")
    lm = HFCausalLM(model)
    prompts = _prompts(input_ids, model_kwargs.get("attention_mask"))
    max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - input_ids.shape[1]
    eos = _single_eos(config)
    processors = _split_processors(logits_processor)
    sampling = dict(temperature=config.temperature or 1.0, top_k=config.top_k, top_p=config.top_p) if config.do_sample else {}
    pad = config.pad_token_id if config.pad_token_id is not None else (eos if eos is not None else 0)
    if processors:
        lengths = torch.tensor([len(p) for p in prompts])
        processors = [HFProcessors(lm, processors, input_ids, lengths, int(pad))]
    result = generate(lm, prompts, method=method, max_new_tokens=max_new, eos_token_id=eos,
                      processors=processors, **sampling, **options)
    custom = [c for c in stopping_criteria or () if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))]
    rows = _stop_early(result.tokens, prompts, custom) if custom else result.tokens
    width = max(len(r) for r in rows)
    out = input_ids.new_full((input_ids.shape[0], input_ids.shape[1] + width), int(pad))  # (B, L + N)
    out[:, : input_ids.shape[1]] = input_ids
    for b, row in enumerate(rows):
        out[b, input_ids.shape[1] : input_ids.shape[1] + len(row)] = row.to(out.device)
    return out


def jacobi_generate(model: Any, input_ids: Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
                    generation_config: Any = None, window: int | str = "auto", lookahead: bool = False,
                    **model_kwargs: Any) -> Tensor:
    """Greedy Jacobi decoding for ``hf_model.generate(..., custom_generate=jacobi_generate)``.

    Returns the same (B, L + N) tensor as greedy ``generate`` (right-padded with pad_token_id).
    ``window`` ("auto" or tokens per pass) and ``lookahead`` (n-gram pool drafts) pass through
    ``generate``'s keyword arguments. transformers does not forward ``streamer`` to custom
    callables; stream with ``jacobix.generate(hf_model, ids, streamer=...)`` instead.
    """
    options = dict(window=window, lookahead=lookahead)
    return _hf_generate(model, input_ids, "jacobi", logits_processor, stopping_criteria, generation_config,
                        options, model_kwargs)


def lookahead_generate(model: Any, input_ids: Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
                       generation_config: Any = None, window: int | str = "auto", generator: Any = None,
                       **model_kwargs: Any) -> Tensor:
    """Jacobi (greedy) or SJD (``do_sample=True``) with n-gram pool drafts and an adaptive window."""
    config = generation_config if generation_config is not None else model.generation_config
    method = "sjd" if config.do_sample else "jacobi"
    options = dict(window=window, lookahead=True, generator=generator)
    return _hf_generate(model, input_ids, method, logits_processor, stopping_criteria, generation_config,
                        options, model_kwargs)


def sjd_generate(model: Any, input_ids: Tensor, logits_processor: Any = None, stopping_criteria: Any = None,
                 generation_config: Any = None, window: int | str = "auto", lookahead: bool = False,
                 generator: Any = None, **model_kwargs: Any) -> Tensor:
    """Speculative Jacobi decoding (lossless sampling) for ``custom_generate`` with ``do_sample=True``.

    ``generator`` (a ``torch.Generator``) makes the draw reproducible.
    """
    options = dict(window=window, lookahead=lookahead, generator=generator)
    return _hf_generate(model, input_ids, "sjd", logits_processor, stopping_criteria, generation_config,
                        options, model_kwargs)


def transformers_generate(model: Any, prompt: Tensor, *, max_new_tokens: int, eos_token_id: int | None,
                          prompt_lookup_num_tokens: int | None = None) -> tuple[Tensor, int, float]:
    """transformers' own greedy ``generate`` (optionally prompt-lookup decoding) on one prompt (L,).

    Returns the new tokens (EOS included, padding cut), the decoding passes (prefill excluded,
    counted by a forward hook) and the wall time in seconds, for side-by-side benchmarks.
    """
    from jacobix.core.timing import clock

    calls = [0]
    hook = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        start = clock(prompt.device)
        out = model.generate(prompt[None], attention_mask=torch.ones_like(prompt)[None], do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
                             prompt_lookup_num_tokens=prompt_lookup_num_tokens)
        elapsed = clock(prompt.device) - start
    finally:
        hook.remove()
    new = out[0, len(prompt) :]
    if eos_token_id is not None and bool((new == eos_token_id).any()):
        new = new[: int((new == eos_token_id).nonzero()[0]) + 1]
    return new, calls[0] - 1, elapsed


__all__ = [
    "HFCausalLM",
    "transformers_generate",
    "HFProcessors",
    "as_causal_lm",
    "check_supported",
    "is_transformers_model",
    "jacobi_generate",
    "load_gguf_cached",
    "lookahead_generate",
    "sjd_generate",
]
