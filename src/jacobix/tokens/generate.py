"""The entry point for token models: :func:`generate`.

``generate`` composes one token decoding from three parts and runs it on the engine:

- a **proposer** (where drafts come from; :mod:`jacobix.tokens.proposers`),
- the **verifier** (one forward over every candidate row, then a pure acceptance rule;
  :mod:`jacobix.tokens.verify`),
- a **width policy** (how many drafts a pass feeds; :mod:`jacobix.tokens.policy`).

The string options (``method``, ``init``, ``lookahead``, ``window="auto"``) are shorthands that
build them; ``proposer=`` and ``policy=`` take your own. A method is a named :class:`Method`
(greedy or sampling, and its default proposer); :func:`register_method` adds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from jacobix.core.engine import FixedPointState, SettledRule, solve
from jacobix.core.sampling import Randomness, LogitsProcessor, SamplingConfig
from jacobix.core.timing import clock
from jacobix.models.protocol import CausalLM
from jacobix.tokens.policy.costs import PROBE_WIDTHS, shared_costs
from jacobix.tokens.policy.width import AdaptiveWidth, WidthPolicy
from jacobix.tokens.problem import TokenProblem
from jacobix.tokens.prompts import Prompt, first_tokens, model_device, model_dtype, pack_prompts, prefill
from jacobix.tokens.proposers.base import Proposer
from jacobix.tokens.proposers.basic import DraftInit, JacobiProposer, resolve_init
from jacobix.tokens.proposers.coupled import CoupledProposer
from jacobix.tokens.proposers.ngram import LookaheadConfig, NGramProposer
from jacobix.tokens.result import DecodeStats, GenerateResult
from jacobix.tokens.verify import Guidance, Verifier
from jacobix.tokens.watch import Watchers

AUTO_MAX_WINDOW = 16


@dataclass(frozen=True)
class Method:
    """A named decoding method.

    Attributes:
        name: what ``generate(method=...)`` takes.
        sampled: True samples (needs temperature > 0), False is greedy, None follows the temperature.
        sequential: one token per pass (the reference decoder); ignores the window.
        proposer: builds the default proposer from the draft rule for fresh slots.
    """

    name: str
    sampled: bool | None
    sequential: bool = False
    proposer: Callable[[DraftInit], Proposer] = JacobiProposer


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> None:
    """Make ``generate(method=method.name)`` available."""
    METHODS[method.name] = method


for _method in (Method("ar", None, sequential=True), Method("jacobi", False), Method("sjd", True),
                Method("sjd-coupled", True, proposer=CoupledProposer)):
    register_method(_method)


def generate(
    model: CausalLM,
    input_ids: Prompt,
    *,
    method: str = "jacobi",
    max_new_tokens: int = 64,
    window: int | Literal["auto"] = 16,
    init: str | DraftInit = "random",
    proposer: Proposer | None = None,
    policy: WidthPolicy | None = None,
    lookahead: bool | LookaheadConfig = False,
    row_length: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    processors: Sequence[LogitsProcessor] = (),
    generator: Randomness = None,
    cfg_scale: float | None = None,
    negative_input_ids: Prompt | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    block: bool = False,
    lossy_sweep_cap: int | None = None,
    lossy_settled: SettledRule | None = None,
    record: bool = False,
    progress: bool = False,
    streamer: Any = None,
) -> GenerateResult:
    """Generate tokens with sequential decoding, greedy Jacobi decoding or SJD.

    Args:
        model: a :class:`~jacobix.models.protocol.CausalLM` (``jacobix.generate`` also takes
            transformers models).
        input_ids: prompts: a (B, L) tensor, a 1-D tensor, or a list of token lists of any lengths.
        method: "ar" (sequential reference), "jacobi" (greedy, equal to greedy "ar"), "sjd"
            (sampling, distributed exactly as sampling "ar"), "sjd-coupled" (SJD whose redrafts
            reuse one noise per position: converges faster, still exact), or a registered name.
        max_new_tokens: tokens to generate per row (fewer if an EOS token appears).
        window: tokens evaluated per pass (drafts + 1); ignored by "ar". "auto": the width
            policy chooses 1 to 16 per pass from measured pass costs and observed acceptance.
        init: draft rule for fresh slots: "random", "repeat", "row-above", "context" (tokens drawn from
            the row's prompt and committed text, as consistency distillation trains) or a DraftInit.
        proposer: your own :class:`~jacobix.tokens.proposers.base.Proposer` (``init`` is then unused).
        policy: your own width policy (default: all drafts, or adaptive with ``window="auto"``).
        lookahead: draft from an n-gram pool of the prompt, output and Jacobi trajectory; True
            or a LookaheadConfig (``verify=K`` verifies K candidates per pass, unguided).
        row_length: tokens per image row, for ``init="row-above"``.
        temperature: 0 for greedy; > 0 samples (required by "sjd").
        top_k, top_p: filters applied to the target distribution at every position.
        processors: more logits processors, called with each position's generated index.
        generator: explicit randomness: one ``torch.Generator``, or a list with one per row (a row's
            sample then does not depend on the batch it runs in, at a fixed window), or None
            for torch's global generator.
        cfg_scale: classifier-free guidance scale; needs ``negative_input_ids``.
        negative_input_ids: unconditional prompts, one per row.
        eos_token_id: stop a row after this token (or any of several).
        block: CLLM's block mode: blocks of ``window`` tokens, each iterated to its fixed point.
        lossy_sweep_cap: LOSSY early exit: commit a block (or window) as it stands after this many
            sweeps on it; counted in ``stats.lossy_per_pass``. None (default) is exact.
        lossy_settled: LOSSY relaxed convergence: a rule ``(old, new) -> (B, D) bool`` such as
            :class:`~jacobix.tokens.early_exit.BinTolerance`; a window whose drafts all count as
            settled is committed as it stands. Counted in ``stats.lossy_per_pass``. None is exact.
        record: keep every sweep's drafts and outputs in ``result.trajectory``.
        progress: show a progress bar of passes.
        streamer: a transformers-style streamer (``put``, ``end``) for one prompt.
    Returns:
        :class:`~jacobix.tokens.result.GenerateResult` with ``.tokens`` and ``.stats``.
    """
    if not isinstance(model, CausalLM):
        raise ValueError(f"{type(model).__name__} is not a jacobix CausalLM (vocab_size, new_cache, embed, forward); "
                         "wrap a transformers model with jacobix.integrations.hf.as_causal_lm or call jacobix.generate")
    spec = _method(method)
    prompts, prompt_length = pack_prompts(input_ids, model.vocab_size, "input_ids")
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    _check_options(spec, max_new_tokens, window, sampling, streamer, prompts.shape[0], generator)
    _check_lossy(lossy_sweep_cap, lossy_settled)
    adaptive = window == "auto" and not spec.sequential
    width = 1 if spec.sequential else (AUTO_MAX_WINDOW if window == "auto" else int(window))
    proposer = _proposer(spec, proposer, init, row_length, lookahead, width - 1)
    device = model_device(model)
    prompts, prompt_length = prompts.to(device), prompt_length.to(device)
    guidance, uncond, uncond_length = _guidance(model, cfg_scale, negative_input_ids, prompt_length)
    limit = prompt_length + max_new_tokens
    verifier = _verifier(model, proposer, guidance, prompt_length, limit, sampling=sampling, processors=processors,
                         eos_token_id=eos_token_id, generator=generator)
    start = clock(device)
    with torch.inference_mode():
        state, prefilled = _start(model, verifier, prompts, prompt_length, uncond, uncond_length, limit, width)
        problem = _problem(model, verifier, proposer, state, policy=policy, adaptive=adaptive, width=width,
                           generator=generator)
        watch = Watchers(progress, spec.name, streamer, state, prompt_length)
        solved = solve(problem, state, window=width, record=record, on_sweep=watch.after_sweep if watch.any else None,
                       block=block, lossy_sweep_cap=lossy_sweep_cap, lossy_settled=lossy_settled)
        problem.finish()
        watch.close()
    elapsed = clock(device) - start
    tokens = [state.values[row, prompt_length[row] : state.length[row]].cpu() for row in range(len(prompts))]
    stats = DecodeStats(method=spec.name, window=width, adaptive=adaptive, forward_passes=solved.forward_passes,
                        prefill_passes=prefilled, new_tokens=[len(t) for t in tokens],
                        committed_per_pass=solved.committed, accepted_per_pass=solved.accepted,
                        active_per_pass=solved.active, lossy_per_pass=solved.lossy,
                        fed_per_pass=torch.tensor(problem.fed_per_pass, dtype=torch.long), wall_time_s=elapsed,
                        schedule=problem.stats)
    return GenerateResult(tokens=tokens, stats=stats, trajectory=solved.trajectory)


def _verifier(model: CausalLM, proposer: Proposer, guidance: Guidance | None, prompt_length: Tensor, limit: Tensor, *,
              sampling: SamplingConfig, processors: Sequence[LogitsProcessor], eos_token_id: int | Sequence[int] | None,
              generator: Randomness) -> Verifier:
    """The verifier with a cache of ``B * R`` rows (``2B`` with guidance) and room for ``limit`` positions."""
    rows = proposer.candidates if guidance is None else 2
    capacity = int(limit.max()) + (0 if guidance is None else int(guidance.position_shift.clamp_min(0).max()))
    eos = () if eos_token_id is None else ((eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id))
    dtype = model_dtype(model)
    return Verifier(model, model.new_cache(len(limit) * rows, capacity), candidates=proposer.candidates,
                    prompt_length=prompt_length, sampling=sampling, processors=processors, guidance=guidance,
                    eos_token_ids=eos, generator=generator,
                    prob_dtype=torch.float64 if dtype == torch.float64 else torch.float32, max_position=capacity - 1)


def _problem(model: CausalLM, verifier: Verifier, proposer: Proposer, state: FixedPointState, *,
             policy: WidthPolicy | None, adaptive: bool, width: int, generator: Randomness) -> TokenProblem:
    """The token problem; with ``window="auto"`` an adaptive policy on the model's shared pass costs,
    probed first if they lack timings."""
    costs = None
    if adaptive and policy is None:
        key = (str(state.values.device), str(model_dtype(model)), len(verifier.prompt_length) * verifier.candidates,
               verifier.sampling.greedy, type(proposer).__name__)
        costs = shared_costs(model, key)
        policy = AdaptiveWidth(proposer.sources, width - 1, costs)
    problem = TokenProblem(verifier, proposer, policy=policy, costs=costs, generator=generator,
                           vocab_size=model.vocab_size, drafts=width - 1)
    batch = len(state.length)
    proposer.begin(batch)
    widths = tuple(w for w in PROBE_WIDTHS if w <= width)
    if costs is not None:
        if costs.needs_probe(widths):
            costs.probe(lambda w: problem.probe(state, w), widths, state.values.device)
            proposer.begin(batch)  # forget what the probe passes proposed
        problem.stats.cost_ratio = costs.ratios(widths)
    verifier.rollback(state, state.length - 1, None)
    return problem


def _start(model: CausalLM, verifier: Verifier, prompts: Tensor, prompt_length: Tensor,
           uncond: Tensor | None, uncond_length: Tensor | None, limit: Tensor, width: int) -> tuple[FixedPointState, int]:
    """Prefill the prompts and commit the first new token from the prefill logits (no extra pass)."""
    state = FixedPointState.start(prompts, prompt_length, limit, width)
    if bool(state.done.all()):
        return state, 0
    logits = prefill(model, verifier.cache, prompts, prompt_length, uncond, uncond_length, verifier.candidates)  # (B or 2B, V)
    first = first_tokens(verifier, logits)  # (B,)
    rows = torch.arange(len(prompts), device=prompts.device)
    state.values[rows, prompt_length] = first
    state.length = state.length + 1
    state.done |= state.length >= state.limit
    if len(verifier.eos):
        state.done |= torch.isin(first, verifier.eos)
    return state, 1


def _method(method: str) -> Method:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(repr(m) for m in METHODS)} "
                         "or register one with jacobix.tokens.generate.register_method")
    return METHODS[method]


def _proposer(spec: Method, proposer: Proposer | None, init: str | DraftInit, row_length: int | None,
              lookahead: bool | LookaheadConfig, drafts: int) -> Proposer:
    if lookahead not in (True, False) and not isinstance(lookahead, LookaheadConfig):
        raise ValueError(f"lookahead must be True, False or a LookaheadConfig, got {lookahead!r}")
    if proposer is not None and not isinstance(proposer, Proposer):
        raise ValueError(f"proposer must be a jacobix.tokens.proposers.Proposer, got {type(proposer).__name__}")
    base = proposer if proposer is not None else spec.proposer(resolve_init(init, row_length=row_length))
    if spec.sequential or not lookahead:
        return base
    return NGramProposer(base, LookaheadConfig() if lookahead is True else lookahead, drafts)


def _guidance(model: CausalLM, cfg_scale: float | None, negative_input_ids: Prompt | None,
              prompt_length: Tensor) -> tuple[Guidance | None, Tensor | None, Tensor | None]:
    """Classifier-free guidance settings and the packed unconditional prompts, or Nones."""
    if cfg_scale is None and negative_input_ids is None:
        return None, None, None
    if cfg_scale is None or negative_input_ids is None:
        raise ValueError("classifier-free guidance needs both cfg_scale and negative_input_ids")
    if not isinstance(cfg_scale, (int, float)) or cfg_scale != cfg_scale or abs(cfg_scale) == float("inf"):
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
    uncond, uncond_length = pack_prompts(negative_input_ids, model.vocab_size, "negative_input_ids")
    batch, device = prompt_length.shape[0], prompt_length.device
    if uncond.shape[0] != batch:
        raise ValueError(f"negative_input_ids has {uncond.shape[0]} rows but input_ids has {batch}; give one per row")
    uncond, uncond_length = uncond.to(device), uncond_length.to(device)
    return Guidance(scale=float(cfg_scale), position_shift=uncond_length - prompt_length), uncond, uncond_length


def _check_options(spec: Method, max_new_tokens: int, window: Any, sampling: SamplingConfig, streamer: Any,
                   batch: int, generator: Randomness) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if window != "auto" and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be an int >= 1 (tokens per pass, drafts + 1) or 'auto', got {window!r}")
    if spec.sampled is False and not sampling.greedy:
        raise ValueError(f"method={spec.name!r} is greedy; for sampling with temperature > 0 use method='sjd'")
    if spec.sampled is True and sampling.greedy:
        raise ValueError(f"method={spec.name!r} samples and needs temperature > 0; for greedy decoding use method='jacobi'")
    if streamer is not None and batch != 1:
        raise ValueError(f"a streamer follows one prompt, got {batch}; stream one prompt at a time")
    if generator is not None and not isinstance(generator, torch.Generator):
        if not isinstance(generator, Sequence) or not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError("generator must be a torch.Generator, a list of them (one per row), or None")
        if len(generator) != batch:
            raise ValueError(f"generator is a list of {len(generator)} generators for {batch} prompts; give one per row")


def _check_lossy(lossy_sweep_cap: int | None, lossy_settled: SettledRule | None) -> None:
    """The LOSSY early-exit options: a sweep cap >= 1 and a callable settled rule, or None (exact)."""
    if lossy_sweep_cap is not None and (not isinstance(lossy_sweep_cap, int) or lossy_sweep_cap < 1):
        raise ValueError(f"lossy_sweep_cap must be an int >= 1 or None (exact), got {lossy_sweep_cap!r}")
    if lossy_settled is not None and not callable(lossy_settled):
        raise ValueError(f"lossy_settled must be a rule (old, new) -> bool per draft, e.g. BinTolerance, got {lossy_settled!r}")


__all__ = ["AUTO_MAX_WINDOW", "METHODS", "Method", "generate", "register_method"]
