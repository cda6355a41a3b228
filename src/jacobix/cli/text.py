"""``jacobix generate``: one prompt, decoded by ar, jacobi and/or sjd, with the passes each took."""

from __future__ import annotations

import argparse
import sys

import torch

from jacobix.api import generate, load_text_model
from jacobix.cli.flags import Help, add_spec_arguments, check_device, decoding_options, positive, specs_from_args
from jacobix.cli.models import text_models
from jacobix.tokens.methods import get_method

ALL = ("ar", "jacobi", "sjd")  # what --method all runs, one after another
DEFAULTS = dict(method="all", window="auto", init="repeat", temperature=0.8)


def add_parser(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser(
        "generate", formatter_class=Help, help="generate text with ar, jacobi and/or sjd and compare",
        description="Generate text and report forward passes. ar and jacobi are greedy (the same text: jacobi in "
        "fewer passes); sjd samples at --temperature. --method ar samples only when --temperature is given; "
        "--method all runs ar, jacobi and sjd one after another.")
    gen.add_argument("prompt", help="the text to continue (for smollm2: the user message of a chat)")
    gen.add_argument("--model", default="shakespeare",
                     help=f"a bundled model ({', '.join(text_models())}) or a checkpoint folder written by "
                     "jacobix.models.save_llama or a trainer")
    add_spec_arguments(gen, defaults=DEFAULTS, more_methods=("all",))
    gen.add_argument("--max-new-tokens", type=positive, default=200, help="tokens to generate (fewer if the model ends its answer)")
    gen.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    gen.add_argument("--device", default="cpu", help="torch device to run on (cpu, cuda, cuda:1, mps)")
    gen.add_argument("--no-progress", action="store_true",
                     help="hide progress bars (they show only when stderr is a terminal)")
    gen.set_defaults(run=run, check=check)


def check(args: argparse.Namespace) -> None:
    """Refuse options that the chosen methods would ignore or cannot honour."""
    given = args.explicit
    check_device(args.device, "text")
    if args.method != "all" and get_method(args.method).sequential:
        for option in decoding_options():
            if option[2:].replace("-", "_") in given:
                raise ValueError(f"{option} does not apply to --method {args.method} (sequential decoding, one token "
                                 "per pass); drop it, or use --method jacobi, sjd or all")
    if args.block and args.window == "auto":
        if "window" in given:
            raise ValueError("--block iterates blocks of --window tokens; give a whole number, e.g. --window 16")
        args.window = 16  # blocks need a size: CLLM's 16
    sampled = {m: _sampled(args, m) for m in _methods(args)}
    for method, samples in sampled.items():
        spec = get_method(method)
        if spec.sampled is False and args.method != "all" and "temperature" in given and args.temperature > 0:
            raise ValueError(f"--method {method} is greedy; to sample use --method sjd --temperature T (or all)")
        if spec.sampled and args.temperature <= 0:
            raise ValueError(f"--temperature 0: {method} samples and needs a temperature > 0; for greedy decoding "
                             "use --method jacobi")
    for name in ("top_k", "top_p"):
        if getattr(args, name) is not None and not any(sampled.values()):
            raise ValueError(f"--{name.replace('_', '-')} applies only to sampling: use --method sjd or all, "
                             "or --method ar with --temperature T")


def _methods(args: argparse.Namespace) -> tuple[str, ...]:
    return ALL if args.method == "all" else (args.method,)


def _sampled(args: argparse.Namespace, method: str) -> bool:
    """Whether ``method`` samples in this run: a sampling method, or ar alone with an explicit temperature."""
    spec = get_method(method)
    if spec.sampled is not None:
        return spec.sampled
    return args.method == method and "temperature" in args.explicit and args.temperature > 0


def _positions(model) -> int | None:
    """Positions the model can attend over (jacobix ``max_seq_len``, transformers ``max_position_embeddings``)."""
    config = getattr(model, "config", None)
    for name in ("max_seq_len", "max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _check_context(args: argparse.Namespace, prompt_length: int, positions: int | None) -> None:
    if positions is None:
        return
    if isinstance(args.window, int) and args.window > positions and args.method != "ar":
        raise ValueError(f"--window {args.window}: model {args.model} has a context of {positions} positions; "
                         f"use --window {min(16, positions)} (or at most {positions}) or --window auto")
    if prompt_length + args.max_new_tokens > positions:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: the prompt ({prompt_length} tokens) and the new "
                         f"tokens exceed the {positions}-position context of model {args.model}; use "
                         f"--max-new-tokens {max(positions - prompt_length, 1)} or a shorter prompt")


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress and sys.stderr.isatty()
    if not progress and args.model == "smollm2":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    text_model = load_text_model(args.model)
    text_model.model.to(args.device)
    prompt = text_model.tokenizer.encode(args.prompt).to(args.device)
    _check_context(args, len(prompt), _positions(text_model.model))
    print(f"model {args.model}, prompt ({len(prompt)} tokens):\n{args.prompt}\n")
    sequential = {}  # seconds per token of the sequential run, by sampled
    for method in _methods(args):
        sampled = _sampled(args, method)
        greedy = {} if sampled else dict(temperature=0.0, top_k=None, top_p=None)
        decoding, sampling = specs_from_args(args, method=method, **greedy)
        result = generate(text_model.model, prompt, decoding=decoding, sampling=sampling,
                          max_new_tokens=args.max_new_tokens, generator=torch.Generator(device=args.device).manual_seed(args.seed),
                          eos_token_id=text_model.eos_token_id, progress=progress)
        _report(args, method, sampled, result, text_model)
        seconds = result.stats.wall_time_s / max(result.stats.new_tokens[0], 1)
        if get_method(method).sequential:
            sequential[sampled] = seconds
        else:
            _cost_line(text_model.model, result.stats, sequential.get(sampled), seconds)
    return 0


def _cost_line(model, stats, sequential: float | None, seconds: float) -> None:
    """The measured cost of the widest pass this run fed, and, beside a sequential run of the same
    mode, its wall ratio and why it lost where it did."""
    from jacobix.tokens.calibrate import pass_cost, why_slower

    width = max(stats.schedule.widths) if stats.schedule is not None and stats.schedule.widths else stats.window
    if width <= 1:
        return
    cost = pass_cost(model, width)
    line = f"--- on this device a {width}-token pass costs {cost:.2f}x a one-token pass (jacobix calibrate measures it)"
    if sequential is not None:
        ratio = sequential / seconds
        line += f"; wall time vs sequential: {ratio:.2f}x"
        if ratio < 1.0:
            line += f"\n--- {why_slower(width, cost, stats.tokens_per_pass)}"
    print(line + "\n")


def _report(args: argparse.Namespace, method: str, sampled: bool, result, text_model) -> None:
    stats = result.stats
    mode = f"sampling at temperature {args.temperature}" if sampled else "greedy"
    drafts = "" if get_method(method).sequential else (", n-gram pool drafts" if args.lookahead else f", {args.init} drafts")
    print(f"=== {method}: {mode}, window {stats.summary()['window']}{drafts} ===")
    print(text_model.tokenizer.decode(result.tokens[0]))
    print(f"--- {stats.forward_passes} passes for {stats.new_tokens[0]} tokens ({stats.tokens_per_pass:.2f} tokens/pass), "
          f"{stats.wall_time_s:.3f} s" + (f"\n--- {stats.schedule.summary()}" if stats.schedule is not None else "") + "\n")


__all__ = ["add_parser", "check", "run"]
