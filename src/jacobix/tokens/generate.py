"""The public entry point for token models: :func:`generate`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from jacobix.tokens.problem import CausalLM, Guidance, TokenProblem
from jacobix.tokens.proposers.basic import DraftInit, resolve_init
from jacobix.core.engine import FixedPointState, SolveStats, SweepRecord, solve
from jacobix.tokens.proposers.ngram import LookaheadConfig
from jacobix.core.sampling import LogitsProcessor, SamplingConfig
from jacobix.core.timing import clock

Method = Literal["ar", "jacobi", "sjd"]
Prompt = Tensor | Sequence[Sequence[int]] | Sequence[Tensor]


@dataclass(frozen=True)
class DecodeStats:
    """Exact counts and wall time of one :func:`generate` call.

    Attributes:
        method: "ar", "jacobi" or "sjd".
        window: tokens evaluated per pass (1 for "ar").
        forward_passes: decoding passes of the model (the prompt's prefill pass not counted).
        prefill_passes: 1 when the prompt was prefilled, else 0.
        new_tokens: tokens generated per row.
        committed_per_pass: (P, B) tokens committed per pass and row.
        accepted_per_pass: (P, B) drafts accepted per pass and row.
        active_per_pass: (P, B) rows still generating during each pass.
        wall_time_s: seconds, prefill included.
        schedule: with ``window="auto"`` or ``lookahead``, the :class:`~jacobix.tokens.policy.adaptive.ScheduleStats`
            (passes per width actually evaluated, measured pass costs, pool drafts); else None.
    """

    method: str
    window: int
    forward_passes: int
    prefill_passes: int
    new_tokens: list[int]
    committed_per_pass: Tensor
    accepted_per_pass: Tensor
    active_per_pass: Tensor
    wall_time_s: float
    schedule: Any = None

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens committed per pass and active row (1 + accepted drafts per pass)."""
        return float(self.committed_per_pass.sum()) / max(int(self.active_per_pass.sum()), 1)

    @property
    def tokens_per_pass(self) -> float:
        """All rows' new tokens over forward passes."""
        return sum(self.new_tokens) / max(self.forward_passes, 1)

    @property
    def position_acceptance(self) -> Tensor:
        """(D,) rate at which draft ``i`` passed, among passes where it was tested."""
        accepted, active = self.accepted_per_pass, self.active_per_pass
        slots = torch.arange(self.window - 1)[:, None, None]  # (D, 1, 1)
        tested = (accepted[None] >= slots) & active[None]  # (D, P, B)
        passed = (accepted[None] > slots) & active[None]
        return passed.sum((1, 2)) / tested.sum((1, 2)).clamp_min(1)

    def summary(self) -> dict[str, float | int | str]:
        return {
            "method": self.method,
            "window": self.window,
            "forward_passes": self.forward_passes,
            "new_tokens": sum(self.new_tokens),
            "tokens_per_pass": round(self.tokens_per_pass, 3),
            "mean_acceptance_length": round(self.mean_acceptance_length, 3),
            "wall_time_s": round(self.wall_time_s, 4),
            **({"schedule": self.schedule.summary()} if self.schedule is not None else {}),
        }


@dataclass(frozen=True)
class GenerateResult:
    """Generated tokens per row (prompt excluded, EOS included) and the statistics."""

    tokens: list[Tensor]
    stats: DecodeStats
    trajectory: list[SweepRecord]


def generate(
    model: CausalLM,
    input_ids: Prompt,
    *,
    method: Method = "jacobi",
    max_new_tokens: int = 64,
    window: int | Literal["auto"] = 16,
    init: str | DraftInit = "random",
    lookahead: bool | LookaheadConfig = False,
    row_length: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    processors: Sequence[LogitsProcessor] = (),
    generator: torch.Generator | None = None,
    cfg_scale: float | None = None,
    negative_input_ids: Prompt | None = None,
    eos_token_id: int | None = None,
    record: bool = False,
    progress: bool = False,
    streamer: Any = None,
) -> GenerateResult:
    """Generate tokens with sequential decoding, greedy Jacobi decoding or SJD.

    Args:
        model: a :class:`~jacobix.tokens.problem.CausalLM` (jacobix's own models, or an adapter), or a
            transformers causal LM (wrapped by :mod:`jacobix.integrations.hf`).
        input_ids: prompts: a (B, L) tensor, a 1-D tensor, or a list of token lists of any lengths.
        method: "ar" (sequential reference), "jacobi" (greedy, equal to greedy "ar") or "sjd"
            (sampling, distributed exactly as sampling "ar").
        max_new_tokens: tokens to generate per row (fewer if ``eos_token_id`` appears).
        window: tokens evaluated per pass, i.e. ``window - 1`` drafts; ignored by "ar". "auto"
            chooses per pass (1 to 16) from the measured cost of a pass and the observed
            acceptance (:mod:`jacobix.tokens.policy.adaptive`); ``stats.schedule`` says what it chose.
        init: draft rule for fresh slots: "random", "repeat", "row-above" or a DraftInit.
        lookahead: draft from an n-gram pool of the prompt, output and Jacobi trajectory
            (:mod:`jacobix.tokens.proposers.ngram`); True or a LookaheadConfig. With ``LookaheadConfig(verify=K)``,
            unguided decoding verifies up to K candidates per pass as sibling rows
            (:mod:`jacobix.tokens.candidates`; sampling stays lossless); with guidance it verifies one.
        row_length: tokens per image row, for ``init="row-above"``.
        temperature: 0 for greedy; > 0 samples (required by "sjd").
        top_k, top_p: filters applied to the target distribution at every position.
        processors: more logits processors, called with each position's generated index.
        generator: explicit randomness; a fresh unseeded one if None.
        cfg_scale: classifier-free guidance scale; needs ``negative_input_ids``.
        negative_input_ids: unconditional prompts, one per row.
        eos_token_id: stop a row after this token.
        record: keep every sweep's drafts and outputs in ``result.trajectory``.
        progress: show a progress bar of passes.
        streamer: a transformers-style streamer (``put(tokens)``, ``end()``, e.g. ``TextStreamer``)
            for one prompt: it gets the prompt, then each pass's committed tokens as they come.
    Returns:
        :class:`GenerateResult` with ``.tokens`` and ``.stats``.
    """
    model = _as_causal_lm(model)
    prompts, prompt_length = _pack_prompts(input_ids, model.vocab_size, "input_ids")
    _check_options(method, max_new_tokens, window, temperature)
    if streamer is not None and prompts.shape[0] != 1:
        raise ValueError(f"a streamer follows one prompt, got {prompts.shape[0]}; stream one prompt at a time")
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    adaptive = window == "auto" and method != "ar"
    window = 1 if method == "ar" else (AUTO_MAX_WINDOW if window == "auto" else window)
    lookahead = (LookaheadConfig() if lookahead is True else lookahead or None) if method != "ar" else None
    device = _model_device(model)
    prompts, prompt_length = prompts.to(device), prompt_length.to(device)
    batch = prompts.shape[0]

    guidance, uncond, uncond_length = _guidance(model, cfg_scale, negative_input_ids, prompt_length)
    limit = prompt_length + max_new_tokens
    state = FixedPointState.start(prompts, prompt_length, limit, window)
    capacity = int(limit.max()) + (0 if guidance is None else int(guidance.position_shift.clamp_min(0).max()))
    cache = model.new_cache(batch if guidance is None else 2 * batch, capacity)
    problem = TokenProblem(
        model,
        cache,
        prompt_length=prompt_length,
        sampling=sampling,
        processors=processors,
        init=resolve_init(init, row_length=row_length),
        generator=generator,
        guidance=guidance,
        eos_token_id=eos_token_id,
        prob_dtype=torch.float64 if _model_dtype(model) == torch.float64 else torch.float32,
        max_position=capacity - 1,
    )
    problem = _schedule(problem, model, window=window, adaptive=adaptive, lookahead=lookahead, device=device)
    start = clock(device)
    with torch.inference_mode():
        prefilled = _prefill(model, cache, prompts, prompt_length, uncond, uncond_length)
        problem.rollback(state)
        watch = _Watchers(_progress_bar(progress, method), streamer, state)
        solved = solve(problem, state, window=window, record=record, on_sweep=watch.after_sweep if watch.any else None)
        watch.close()
    elapsed = clock(device) - start
    tokens = [state.values[row, prompt_length[row] : state.length[row]].cpu() for row in range(batch)]
    stats = _decode_stats(method, solved, tokens, prefilled, elapsed, getattr(problem, "stats", None))
    return GenerateResult(tokens=tokens, stats=stats, trajectory=solved.trajectory)


def _guidance(
    model: CausalLM, cfg_scale: float | None, negative_input_ids: Prompt | None, prompt_length: Tensor
) -> tuple[Guidance | None, Tensor | None, Tensor | None]:
    """Classifier-free guidance settings and the packed unconditional prompts, or Nones."""
    if cfg_scale is None and negative_input_ids is None:
        return None, None, None
    if cfg_scale is None or negative_input_ids is None:
        raise ValueError("classifier-free guidance needs both cfg_scale and negative_input_ids")
    uncond, uncond_length = _pack_prompts(negative_input_ids, model.vocab_size, "negative_input_ids")
    batch, device = prompt_length.shape[0], prompt_length.device
    if uncond.shape[0] != batch:
        raise ValueError(f"negative_input_ids has {uncond.shape[0]} rows but input_ids has {batch}; give one per row")
    uncond, uncond_length = uncond.to(device), uncond_length.to(device)
    guidance = Guidance(
        scale=float(cfg_scale),
        position_shift=uncond_length - prompt_length,
        last_prompt_token=uncond[torch.arange(batch, device=device), uncond_length - 1],
    )
    return guidance, uncond, uncond_length


def _schedule(problem: TokenProblem, model: CausalLM, *, window: int, adaptive: bool,
              lookahead: LookaheadConfig | None, device: torch.device):
    """Wrap the problem in the adaptive window / n-gram pool / multi-candidate schedulers if asked."""
    dtype = _model_dtype(model)
    if lookahead is not None and lookahead.verify > 1 and problem.guidance is None:
        from jacobix.tokens.candidates import verify_candidates

        return verify_candidates(problem, model, drafts=window - 1, adaptive=adaptive, lookahead=lookahead,
                                 device=device, dtype=dtype)
    if adaptive or lookahead is not None:
        from jacobix.tokens.policy.adaptive import AdaptiveConfig, schedule

        return schedule(problem, model, drafts=window - 1, adaptive=adaptive, lookahead=lookahead,
                        config=AdaptiveConfig(max_window=window), device=device, dtype=dtype)
    return problem


AUTO_MAX_WINDOW = 16


def _as_causal_lm(model: Any) -> CausalLM:
    """Models with ``new_cache`` pass through; transformers models get the :mod:`jacobix.integrations.hf` adapter."""
    if hasattr(model, "new_cache") and hasattr(model, "forward"):
        return model
    if any(c.__module__.startswith("transformers.") for c in type(model).__mro__):
        from jacobix.integrations.hf import as_causal_lm

        return as_causal_lm(model)
    raise ValueError(
        f"{type(model).__name__} is not a jacobix CausalLM (vocab_size, new_cache, forward(tokens, positions, cache)) "
        "nor a transformers causal LM"
    )


def _check_options(method: str, max_new_tokens: int, window: int | str, temperature: float) -> None:
    if method not in ("ar", "jacobi", "sjd"):
        raise ValueError(f"unknown method {method!r}; use 'ar', 'jacobi' or 'sjd'")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if isinstance(window, str):
        if window != "auto":
            raise ValueError(f"window must be an int >= 1 or 'auto', got {window!r}")
    elif window < 1:
        raise ValueError(f"window must be >= 1 (tokens per pass, drafts + 1), got {window}")
    if method == "jacobi" and temperature != 0:
        raise ValueError("method='jacobi' is greedy; for sampling with temperature > 0 use method='sjd'")
    if method == "sjd" and temperature == 0:
        raise ValueError("method='sjd' samples and needs temperature > 0; for greedy decoding use method='jacobi'")


def _pack_prompts(prompts: Prompt, vocab_size: int, name: str) -> tuple[Tensor, Tensor]:
    """Right-pad prompts into (B, L) long and their lengths (B,)."""
    if isinstance(prompts, Tensor):
        if prompts.dim() == 1:
            prompts = prompts[None]
        if prompts.dim() != 2:
            raise ValueError(f"{name} must be 1-D or 2-D (batch, length), got shape {tuple(prompts.shape)}")
        rows = list(prompts)
    else:
        rows = [torch.as_tensor(row, dtype=torch.long) for row in prompts]
    if not rows:
        raise ValueError(f"{name} is empty: give at least one prompt")
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    if int(lengths.min()) == 0:
        raise ValueError(f"{name} has an empty prompt; every row needs at least one token (e.g. a BOS token)")
    packed = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, row in enumerate(rows):
        if row.dim() != 1:
            raise ValueError(f"{name}: each prompt must be a 1-D sequence of token ids")
        packed[i, : len(row)] = row.to(torch.long)
    if int(packed.min()) < 0 or int(packed.max()) >= vocab_size:
        raise ValueError(f"{name} holds token ids outside [0, {vocab_size}) of this model's vocabulary")
    return packed, lengths


def _prefill(
    model: CausalLM, cache, prompts: Tensor, lengths: Tensor, uncond: Tensor | None, uncond_lengths: Tensor | None
) -> int:
    """Write every prompt token but the last into the cache; the first sweep feeds the last."""
    rows, row_lengths = [prompts], [lengths]
    if uncond is not None:
        width = max(prompts.shape[1], uncond.shape[1])
        rows = [torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in (prompts, uncond)]
        row_lengths = [lengths, uncond_lengths]
    tokens, lengths = torch.cat(rows), torch.cat(row_lengths)  # (M, L), (M,)
    if tokens.shape[1] <= 1:
        return 0
    tokens = tokens[:, :-1]
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    model.forward(tokens, positions, cache)
    return 1


def _decode_stats(
    method: str, solved: SolveStats, tokens: list[Tensor], prefilled: int, elapsed: float, schedule: Any = None
) -> DecodeStats:
    return DecodeStats(
        method=method,
        window=solved.window,
        forward_passes=solved.forward_passes,
        prefill_passes=prefilled,
        new_tokens=[len(t) for t in tokens],
        committed_per_pass=solved.committed,
        accepted_per_pass=solved.accepted,
        active_per_pass=solved.active,
        wall_time_s=elapsed,
        schedule=schedule,
    )


def _model_device(model: CausalLM) -> torch.device:
    first = _first_parameter(model)
    return first.device if first is not None else torch.device("cpu")


def _model_dtype(model: CausalLM) -> torch.dtype:
    first = _first_parameter(model)
    return first.dtype if first is not None else torch.float32


def _first_parameter(model: CausalLM) -> Tensor | None:
    parameters = getattr(model, "parameters", None)
    return next(iter(parameters()), None) if parameters else None


class _Watchers:
    """What follows a solve from outside: a progress bar and a streamer of committed tokens (row 0)."""

    def __init__(self, bar: Any, streamer: Any, state: FixedPointState) -> None:
        self.bar, self.streamer, self.state = bar, streamer, state
        self.any = bar is not None or streamer is not None
        self.sent = int(state.length[0])
        if streamer is not None:
            streamer.put(state.values[0, : self.sent].cpu())  # the prompt, as transformers streams it

    def after_sweep(self) -> None:
        if self.bar is not None:
            self.bar.update()
        if self.streamer is not None:
            length = int(self.state.length[0])
            if length > self.sent:
                self.streamer.put(self.state.values[0, self.sent : length].cpu())
                self.sent = length

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.streamer is not None:
            self.streamer.end()


def _progress_bar(enabled: bool, method: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=f"jacobix {method}", unit="pass", leave=False)
