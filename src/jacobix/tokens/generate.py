"""The entry point for token models: :func:`generate`.

``generate`` composes one token decoding from three parts and runs it on the engine:

- a **proposer** (where drafts come from; :mod:`jacobix.tokens.proposers`),
- the **verifier** (one forward over every candidate row, then a pure acceptance rule;
  :mod:`jacobix.tokens.verify`),
- a **width policy** (how many tokens a pass feeds; :mod:`jacobix.tokens.width`).

What to build is declared by a :class:`~jacobix.tokens.decoding.Decoding` and a
:class:`~jacobix.core.sampling.SamplingConfig`; the keywords after them describe the request.
"""

from __future__ import annotations

from numbers import Integral
import statistics
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor

from jacobix.core.engine import FixedPointState, solve
from jacobix.core.sampling import LogitsProcessor, Randomness, SamplingConfig
from jacobix.core.timing import clock
from jacobix.models.protocol import CausalLM
from jacobix.tokens.decoding import IMAGE_INITS, Decoding, Guidance
from jacobix.tokens.prompts import Prompt, first_tokens, model_device, model_dtype, pack_prompts, prefill
from jacobix.tokens.proposers.base import Proposer
from jacobix.tokens.proposers.basic import resolve_init
from jacobix.tokens.proposers.ngram import LookaheadConfig, NGramProposer
from jacobix.tokens.proposers.tree import TreeProposer
from jacobix.tokens.problem import TokenProblem
from jacobix.tokens.result import DecodeStats, GenerateResult
from jacobix.tokens.verify import GuidanceShift, Verifier
from jacobix.tokens.watch import Watchers
from jacobix.tokens.width.calibration import Calibration, costs_for, remember, where_of
from jacobix.tokens.width.costs import PROBE_WIDTHS, CostBook
from jacobix.tokens.width.multiblock import MultiBlockWidth
from jacobix.tokens.width.policy import AdaptiveWidth, FixedWidth


def generate(
    model: CausalLM,
    input_ids: Prompt,
    decoding: Decoding | None = None,
    sampling: SamplingConfig | None = None,
    *,
    max_new_tokens: int = 64,
    guidance: Guidance | None = None,
    processors: Sequence[LogitsProcessor] = (),
    generator: Randomness = None,
    eos_token_id: int | Sequence[int] | None = None,
    record: bool = False,
    progress: bool = False,
    streamer: Any = None,
) -> GenerateResult:
    """Generate tokens with sequential decoding, greedy Jacobi decoding or SJD.

    Args:
        model: a :class:`~jacobix.models.protocol.CausalLM` (``jacobix.generate`` also takes
            transformers models and the spec's fields as keywords).
        input_ids: prompts: a (B, L) tensor, a 1-D tensor, or a list of token lists of any lengths.
        decoding: how windows are drafted, verified and sized (default: greedy Jacobi, window="auto").
        sampling: the target distribution (default greedy).
        max_new_tokens: tokens to generate per row (fewer if an EOS token appears).
        guidance: classifier-free guidance against unconditional prompts, or None.
        processors: more logits processors, called with each position's generated index.
        generator: one ``torch.Generator``, a list with one per row (a row's sample then does not
            depend on its batch, at a fixed window), or None for torch's global generator.
        eos_token_id: stop a row after this token (or any of several).
        record: keep every sweep's drafts and outputs in ``result.trajectory``.
        progress: show a progress bar of passes (on a terminal).
        streamer: a transformers-style streamer (``put``, ``end``) for one prompt.
    Returns:
        :class:`~jacobix.tokens.result.GenerateResult` with ``.tokens`` and ``.stats``.
    """
    decoding, sampling = decoding or Decoding(), sampling or SamplingConfig()
    _check_request(model, decoding, sampling, max_new_tokens, guidance, record, progress)
    prompts, prompt_length = pack_prompts(input_ids, _input_vocab(model), "input_ids")
    _check_batch(len(prompts), streamer, generator)
    width, proposer = decoding.max_window, _proposer(decoding, decoding.max_window - 1)
    device = model_device(model)
    prompts, prompt_length = prompts.to(device), prompt_length.to(device)
    shift, uncond, uncond_length = _guidance(model, guidance, prompt_length)
    limit = prompt_length + max_new_tokens
    verifier = _verifier(model, proposer, shift, prompt_length, limit, sampling, processors, eos_token_id, generator,
                         _tree_room(decoding, width))
    start = clock(device)
    with torch.inference_mode():
        state, prefilled = _start(model, verifier, prompts, prompt_length, uncond, uncond_length, limit, width)
        problem = _problem(model, decoding, verifier, proposer, state, width, generator)
        watch = Watchers(progress, decoding.method, streamer, state, prompt_length)
        solved = solve(problem, state, window=width, record=record, on_sweep=watch.after_sweep if watch.any else None,
                       block=decoding.block, lossy_sweep_cap=getattr(decoding.lossy, "sweep_cap", None),
                       lossy_settled=getattr(decoding.lossy, "settled", None))
        problem.finish()
        watch.close()
    elapsed = clock(device) - start
    tokens = [state.values[row, prompt_length[row] : state.length[row]].cpu() for row in range(len(prompts))]
    stats = _stats(decoding, width, solved, problem, prefilled, tokens, elapsed)
    return GenerateResult(tokens=tokens, stats=stats, trajectory=solved.trajectory)


def _stats(decoding: Decoding, width: int, solved: Any, problem: TokenProblem, prefilled: int, tokens: list[Tensor],
           elapsed: float) -> DecodeStats:
    return DecodeStats(method=decoding.method, window=width, adaptive=decoding.adaptive,
                       forward_passes=solved.forward_passes, prefill_passes=prefilled,
                       new_tokens=[len(t) for t in tokens], committed_per_pass=solved.committed,
                       accepted_per_pass=solved.accepted, active_per_pass=solved.active, lossy_per_pass=solved.lossy,
                       fed_per_pass=torch.tensor(problem.fed_per_pass, dtype=torch.long), wall_time_s=elapsed,
                       schedule=problem.stats, branch_per_pass=_branches(decoding, problem, solved.accepted))


def _branches(decoding: Decoding, problem: TokenProblem, accepted: Tensor) -> Tensor | None:
    """(P, B) drafts accepted on tree branches per pass, or None without a tree."""
    if decoding.tree is None:
        return None
    if not problem.branch_per_pass:
        return torch.zeros_like(accepted)
    return torch.stack(problem.branch_per_pass)


def _check_request(model: Any, decoding: Any, sampling: Any, max_new_tokens: Any, guidance: Any, record: Any,
                   progress: Any) -> None:
    """The request's own arguments, and the spec's rules that tie it to sampling."""
    if not isinstance(model, CausalLM):
        raise ValueError(f"{type(model).__name__} is not a jacobix CausalLM (vocab_size, new_cache, embed, forward); "
                         "wrap a transformers model with jacobix.integrations.hf.as_causal_lm or call jacobix.generate")
    if not isinstance(decoding, Decoding):
        raise ValueError(f"decoding must be a jacobix Decoding, got {type(decoding).__name__}")
    decoding.check(sampling)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if guidance is not None and not isinstance(guidance, Guidance):
        raise ValueError(f"guidance must be a jacobix Guidance(scale=..., negative_input_ids=...), got {guidance!r}")
    for name, value in (("record", record), ("progress", progress)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    tree = decoding.tree
    if tree is not None and tree.branches > model.vocab_size:
        raise ValueError(f"Decoding.tree has {tree.branches} branches but the model's vocabulary holds "
                         f"{model.vocab_size} tokens; use at most {model.vocab_size} branches")
    if isinstance(decoding.init, str) and decoding.init in IMAGE_INITS and decoding.proposer is None:
        raise ValueError(f"init={decoding.init!r} drafts from an image model's tables; decode images with "
                         "jacobix.images.generate_images")


def _check_batch(batch: int, streamer: Any, generator: Randomness) -> None:
    if streamer is not None and batch != 1:
        raise ValueError(f"a streamer follows one prompt, got {batch}; stream one prompt at a time")
    if generator is not None and not isinstance(generator, torch.Generator):
        if not isinstance(generator, Sequence) or not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError("generator must be a torch.Generator, a list of them (one per row), or None")
        if len(generator) != batch:
            raise ValueError(f"generator is a list of {len(generator)} generators for {batch} prompts; give one per row")


def _proposer(decoding: Decoding, drafts: int) -> Proposer:
    """The spec's proposer, or its method's default one on its draft rule, wrapped by the n-gram pool."""
    if decoding.proposer is not None:
        base = decoding.proposer
    else:
        base = decoding.spec.proposer(resolve_init(decoding.init, row_length=decoding.row_length))
    if decoding.tree is not None and not decoding.spec.sequential:
        return TreeProposer(base, decoding.tree)
    if decoding.spec.sequential or not decoding.lookahead:
        return base
    return NGramProposer(base, LookaheadConfig() if decoding.lookahead is True else decoding.lookahead, drafts)


def _tree_room(decoding: Decoding, width: int) -> int:
    """Cache slots a draft tree writes past the last position: its whole window at the last root."""
    return 0 if decoding.tree is None or decoding.spec.sequential else width + decoding.tree.extra_nodes


def _eos_ids(eos_token_id: int | Sequence[int] | None, vocab_size: int) -> tuple[int, ...]:
    """The stop tokens as a tuple, each an int (not a bool) in ``[0, vocab_size)``."""
    given = eos_token_id.tolist() if isinstance(eos_token_id, Tensor) else eos_token_id
    eos = () if given is None else ((given,) if isinstance(given, (Integral, float, str)) else tuple(given))
    if any(isinstance(t, bool) or not isinstance(t, Integral) or not 0 <= t < vocab_size for t in eos):
        raise ValueError(f"eos_token_id must be token ids in [0, {vocab_size}) of this model's vocabulary, got {eos_token_id!r}")
    return tuple(int(t) for t in eos)


def _verifier(model: CausalLM, proposer: Proposer, guidance: GuidanceShift | None, prompt_length: Tensor,
              limit: Tensor, sampling: SamplingConfig, processors: Sequence[LogitsProcessor],
              eos_token_id: int | Sequence[int] | None, generator: Randomness, room: int = 0) -> Verifier:
    """The verifier with a cache of ``B * R`` rows (``2B`` with guidance) and room for ``limit`` positions
    (plus ``room`` slots where a draft tree's nodes are written past the last position)."""
    rows = proposer.candidates if guidance is None else 2
    shifted = int(limit.max()) + (0 if guidance is None else int(guidance.position_shift.clamp_min(0).max()))
    capacity = shifted + room
    ceiling = getattr(model, "max_positions", None)
    if room and ceiling is not None and capacity > ceiling:
        raise ValueError(f"a draft tree writes its nodes past the last position: {capacity} cache slots, but this "
                         f"model holds {ceiling}; use a smaller window or Decoding.tree, or fewer new tokens")
    eos = _eos_ids(eos_token_id, model.vocab_size)
    dtype = model_dtype(model)
    return Verifier(model, model.new_cache(len(limit) * rows, capacity), candidates=proposer.candidates,
                    prompt_length=prompt_length, sampling=sampling, processors=processors, guidance=guidance,
                    eos_token_ids=eos, generator=generator,
                    prob_dtype=torch.float64 if dtype == torch.float64 else torch.float32, max_position=shifted - 1)


def _problem(model: CausalLM, decoding: Decoding, verifier: Verifier, proposer: Proposer, state: FixedPointState,
             width: int, generator: Randomness) -> TokenProblem:
    """The token problem; with ``window="auto"`` the adaptive policy kept in the spec's book for this
    kind of pass, on the calibrated cost table (or live timings, probed first if it has none)."""
    costs, policy = None, decoding.width_policy
    if decoding.multiblock is not None:
        policy = MultiBlockWidth(decoding.multiblock, width - 1)
    if decoding.adaptive and policy is None:
        rows = verifier.forward_rows
        kind = pass_kind(decoding, verifier.sampling, verifier.guidance is not None)
        where = where_of(model, state.values.device, model_dtype(model), kind)
        # What the policy learns is the model's own (two models of one shape share costs, not acceptance).
        key = (where, id(model), rows, verifier.sampling.greedy, type(proposer).__name__, tuple(proposer.sources), width - 1)
        costs = costs_for(decoding.costs, where, rows, key)
        if costs.needs_probe(PROBE_WIDTHS) and decoding.costs.cache:  # a first run: measure whole passes, keep them
            context, passes = _timing_window(model, verifier.prompt_length, state.limit)
            guidance = None if verifier.guidance is None else verifier.guidance.scale
            measured = calibrate(model, batch_sizes=(rows,), context=context, rounds=3,
                                 passes=passes, decoding=decoding, sampling=verifier.sampling, guidance_scale=guidance,
                                 processors=verifier.processors)
            costs = remember(decoding.costs, where, measured).for_rows(rows)
        policy = decoding.costs.policy(key, lambda: AdaptiveWidth(proposer.sources, width - 1, costs))
        policy.costs = costs
        policy.restart()
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


def _timing_window(model: CausalLM, prompt_length: Tensor, limit: Tensor) -> tuple[int, int]:
    """Context and passes for timing this generation's passes: at the middle of its new tokens
    (attention grows with the context). The timing runs have caches of their own, so they may use
    the room up to the model's ``max_positions`` (a short generation leaves too little to time a
    wide pass); a model with no declared limit gets the room of this generation's cache."""
    longest, room = int(prompt_length.max()), int((limit - prompt_length).min())
    context = longest + room // 2
    ceiling = getattr(model, "max_positions", None)
    after = room - room // 2 if ceiling is None else max(room - room // 2, int(ceiling) - context)
    return context, max(1, min(6, (after - 2) // 4))


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


def _input_vocab(model: CausalLM) -> int:
    """Token ids a prompt may hold: ``model.input_vocab_size`` where a model reads ids it never predicts
    (a text prompt before image codes), else ``model.vocab_size``."""
    return int(getattr(model, "input_vocab_size", model.vocab_size))


def _guidance(model: CausalLM, guidance: Guidance | None,
              prompt_length: Tensor) -> tuple[GuidanceShift | None, Tensor | None, Tensor | None]:
    """The verifier's guidance and the packed unconditional prompts, or Nones."""
    if guidance is None:
        return None, None, None
    uncond, uncond_length = pack_prompts(guidance.negative_input_ids, _input_vocab(model), "negative_input_ids")
    batch, device = prompt_length.shape[0], prompt_length.device
    if uncond.shape[0] != batch:
        raise ValueError(f"negative_input_ids has {uncond.shape[0]} rows but input_ids has {batch}; give one per row")
    uncond, uncond_length = uncond.to(device), uncond_length.to(device)
    return GuidanceShift(scale=float(guidance.scale), position_shift=uncond_length - prompt_length), uncond, uncond_length


DEFAULT_BATCH_SIZES = (1, 4, 16, 64)


def calibrate(model: CausalLM, *, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, context: int = 64,
              rounds: int = 5, seed: int = 0, passes: int = 12, decoding: Decoding | None = None,
              sampling: SamplingConfig | None = None, guidance_scale: float | None = None,
              processors: Sequence[LogitsProcessor] = ()) -> Calibration:
    """Time whole decoding passes of every width against the one-token pass, for each batch size.

    A pass is timed as ``window="auto"`` runs it: generations whose width policy feeds ``k - 1``
    drafts every pass, the time of ``passes`` more passes (proposal, forward, rule, redraft and the
    engine's bookkeeping; the difference of two runs, so the prefill is left out). After an untimed round (first calls pay for
    allocations), ``rounds`` interleaved rounds time every width against the one-token run of the
    same round, so a machine whose speed drifts still gives the right ratios; the median over
    rounds keeps out the rounds a busy neighbour slowed.

    Args:
        model: the model to measure (its device and dtype are the calibration's).
        batch_sizes: rows per pass to measure (prompts; double them for classifier-free guidance).
        context: prompt tokens before the timed passes.
        rounds: interleaved timing rounds per batch size (at least 3).
        seed: the random prompts' and draws' seed.
        passes: passes per timed run.
        decoding, sampling, guidance_scale, processors: the kind of pass to time (default greedy
            Jacobi with "repeat" drafts); with guidance a batch size counts both halves.
    Returns:
        A :class:`~jacobix.tokens.width.calibration.Calibration`; ``.save(path)`` writes it.
    """
    for name, value, least in (("rounds", rounds, 3), ("context", context, 1), ("passes", passes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be whole numbers >= 1, got {batch_sizes!r}")
    decoding = replace(decoding or Decoding(method="jacobi", init="repeat"), window=PROBE_WIDTHS[-1],
                       costs=CostBook(cache=False), lossy=None)
    sampling, generator, costs, seconds = sampling or SamplingConfig(), torch.Generator().manual_seed(seed), {}, {}
    for rows in sorted(set(batch_sizes)):
        prompts = torch.randint(0, model.vocab_size, (max(rows // (1 if guidance_scale is None else 2), 1), context),
                                generator=generator).to(model_device(model))
        guide = None if guidance_scale is None else Guidance(scale=guidance_scale, negative_input_ids=prompts[:, :1])
        specs = {w: replace(decoding, width_policy=FixedWidth(w - 1)) for w in PROBE_WIDTHS}
        ratios: dict[int, list[float]] = {w: [] for w in PROBE_WIDTHS}
        ones = []
        for round_ in range(rounds + 1):
            per_pass = {}
            for w, spec in specs.items():
                # Two runs, `passes` passes apart: their difference is the passes alone (no prefill, no set-up).
                short, long = (generate(model, prompts, spec, sampling, max_new_tokens=n, guidance=guide, processors=processors,
                                        generator=torch.Generator().manual_seed(seed)).stats for n in (2, min(w, 4) * passes + 2))
                extra = long.forward_passes - short.forward_passes
                per_pass[w] = (max(long.wall_time_s - short.wall_time_s, 1e-9) / extra if extra >= 3  # accepted drafts
                               else long.wall_time_s / max(long.forward_passes, 1))  # left too few passes to difference
            if round_:  # the first round only warms up
                ones.append(per_pass[1])
                for w in PROBE_WIDTHS:
                    ratios[w].append(per_pass[w] / per_pass[1])
        floor, costs[rows] = 1.0, {}
        for w in PROBE_WIDTHS:  # never below a narrower width's cost
            floor = max(floor, statistics.median(ratios[w])) if w > 1 else 1.0
            costs[rows][w] = floor
        seconds[rows] = statistics.median(ones)
    kind = pass_kind(decoding, sampling, guidance_scale is not None)
    return Calibration(where_of(model, model_device(model), model_dtype(model), kind), costs, seconds)


def pass_kind(decoding: Decoding, sampling: SamplingConfig, guided: bool) -> str:
    """What a pass's cost shape depends on besides the model and the machine: the method, the draft
    rule or proposer, greedy or sampled, and guidance."""
    drafts = type(decoding.proposer).__name__ if decoding.proposer is not None else (
        decoding.init if isinstance(decoding.init, str) else type(decoding.init).__name__)
    pool = "+pool" if decoding.lookahead else ""
    return (f"{decoding.method}/{drafts}{pool}/{'greedy' if sampling.greedy else 'sampled'}"
            + ("/guided" if guided else ""))


__all__ = ["DEFAULT_BATCH_SIZES", "calibrate", "generate", "pass_kind"]
