"""The ``jacobix`` command: generate, bench, demo and train."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from jacobix.api import generate

METHODS = ("ar", "jacobi", "sjd")
TRAINERS = {  # target: (module with main(argv), arguments it always gets); output: ./jacobix-train/NAME unless --out or --replace-bundled
    "shakespeare": ("jacobix.train.shakespeare", []),
    "vq": ("jacobix.train.vq", []),
    "image-ar": ("jacobix.train.image_ar", []),
    "classifier": ("jacobix.train.classifier", []),
    "tarflow-fashion": ("jacobix.train.tarflow", ["fashion"]),
    "tarflow-digits": ("jacobix.train.tarflow", ["digits"]),
}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"jacobix: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jacobix", description=__doc__)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the bundled models are too small to gain from more; 0 = torch's choice)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of training and benchmarks")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="generate text with ar, jacobi and/or sjd and compare")
    gen.add_argument("prompt")
    gen.add_argument("--model", default="shakespeare", help="bundled model name (shakespeare, smollm2) or checkpoint folder")
    gen.add_argument("--method", choices=(*METHODS, "all"), default="all")
    gen.add_argument("--window", type=_window, default=16, help="tokens per pass (drafts + 1), or 'auto'")
    gen.add_argument("--lookahead", action="store_true", help="draft from an n-gram pool (jacobi, sjd)")
    gen.add_argument("--init", default="repeat", help="draft init: random, repeat")
    gen.add_argument("--temperature", type=float, default=0.8, help="for ar sampling and sjd (jacobi is greedy)")
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--max-new-tokens", type=int, default=200)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--no-progress", action="store_true", help="hide progress bars")
    gen.set_defaults(run=_generate)

    bench = commands.add_parser("bench", help="measure sequential vs parallel decoding side by side")
    bench.add_argument("target", nargs="?", default="text", choices=("text", "images", "tarflow"))
    bench.add_argument("--model", default="shakespeare")
    bench.add_argument("--max-new-tokens", type=int, default=200)
    bench.add_argument("--seeds", type=int, default=3, help="seeds per prompt / class")
    bench.add_argument("--batch-size", type=int, help="tarflow: samples per call (default 1); images: per batch (default 50)")
    bench.add_argument("--tolerance", type=float, default=1e-4, help="tarflow: GS-Jacobi relative residual")
    bench.add_argument("--device", default="cpu", help="text: torch device of the model, e.g. cuda (default cpu)")
    bench.add_argument("--per-prompt", action="store_true", help="text: also print passes and wall ratios per prompt")
    bench.add_argument("--quick", action="store_true", help="a small run for smoke tests")
    bench.add_argument("--json", type=Path, metavar="FILE", help="text: also write the table as a JSON list, one object per setting")
    bench.set_defaults(run=_bench)

    demo = commands.add_parser("demo", help="the main demo: text comparison, then pictures")
    demo.add_argument("target", nargs="?", default="all", choices=("all", "text", "images", "tarflow"))
    demo.add_argument("--out", type=Path, default=Path("jacobix-out"), help="folder for pictures")
    demo.add_argument("--quick", action="store_true", help="fewer samples")
    demo.set_defaults(run=_demo)

    train = commands.add_parser("train", help="reproduce a bundled checkpoint (options after TARGET go to its trainer)")
    train.add_argument("target", choices=sorted(TRAINERS))
    train.add_argument("options", nargs=argparse.REMAINDER, help="e.g. --data DIR --out DIR --steps N; see TARGET --help")
    train.set_defaults(run=_train)
    return parser


def _window(text: str) -> int | str:
    return text if text == "auto" else int(text)


def _generate(args: argparse.Namespace) -> int:
    from jacobix.integrations.hf.smollm2 import load_named

    text_model = load_named(args.model)
    prompt = text_model.tokenizer.encode(args.prompt)
    methods = METHODS if args.method == "all" else (args.method,)
    for method in methods:
        sampled = method == "sjd" or (method == "ar" and args.method != "all" and args.temperature > 0)
        result = generate(
            text_model.model,
            prompt,
            method=method,
            window=args.window,
            init=args.init,
            lookahead=args.lookahead,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature if sampled else 0.0,
            top_k=args.top_k if sampled else None,
            top_p=args.top_p if sampled else None,
            generator=torch.Generator().manual_seed(args.seed),
            eos_token_id=text_model.eos_token_id,
            progress=not args.no_progress,
        )
        stats = result.stats
        mode = f"sampling T={args.temperature}" if sampled else "greedy"
        print(f"=== {method} ({mode}, window {stats.window}) ===")
        print(args.prompt + text_model.tokenizer.decode(result.tokens[0]))
        print(
            f"--- {stats.forward_passes} passes for {stats.new_tokens[0]} tokens "
            f"({stats.tokens_per_pass:.2f} tokens/pass), {stats.wall_time_s:.3f} s"
            + (f"\n--- {stats.schedule.summary()}" if stats.schedule is not None else "") + "\n"
        )
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.target == "text":
        from jacobix.bench.text import HF_PROMPTS, HF_SETTINGS, TextBenchConfig, bench_text
        from jacobix.integrations.hf.smollm2 import HF_TEXT_MODELS

        hf = dict(prompts=HF_PROMPTS, settings=HF_SETTINGS) if args.model in HF_TEXT_MODELS else {}
        config = TextBenchConfig(
            **hf,
            model=args.model,
            max_new_tokens=60 if args.quick else args.max_new_tokens,
            seeds=tuple(range(1 if args.quick else args.seeds)),
            device=args.device,
        )
        result = bench_text(config)
        print(result.table())
        if args.per_prompt:
            print("\n" + result.prompt_table())
        if args.json:
            _write_json(args.json, result.records())
    elif args.target == "tarflow":
        from jacobix.bench.tarflow import TarFlowBenchConfig, bench_tarflow

        quick = dict(num_samples=8, calibration_samples=64, reference_samples=500) if args.quick else {}
        config = TarFlowBenchConfig(batch_size=args.batch_size or 1, tolerance=args.tolerance, **quick)
        print(bench_tarflow(config=config).table())
    else:
        from jacobix.bench.images import ImageBenchConfig, bench_images, format_table

        sizes = dict(per_class=1, seeds=(0,)) if args.quick else dict(seeds=tuple(range(args.seeds)))
        config = ImageBenchConfig(batch_size=args.batch_size or 50, **sizes)
        print(format_table(bench_images(config)))
    return 0


def _write_json(path: Path, records: list[dict]) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2) + "\n")
    print(f"wrote {path}")


def _demo(args: argparse.Namespace) -> int:
    if args.target in ("all", "text"):
        _text_demo(quick=args.quick or args.target == "all")
    if args.target in ("all", "images"):
        from jacobix.demos.images import demo_images

        print(f"\n== image tokens: AR vs SJD on the bundled Fashion-MNIST model -> {args.out / 'images'}")
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
    from jacobix.models.registry import load_text_model

    text_model = load_text_model("shakespeare")
    prompt = "ROMEO:\n"
    print("jacobix demo: the bundled character-level Shakespeare model (", end="")
    print(f"{sum(p.numel() for p in text_model.model.parameters()):,} parameters)\n")
    tokens = text_model.tokenizer.encode(prompt)
    greedy = generate(text_model.model, tokens, method="jacobi", window="auto", lookahead=True, init="repeat",
                      max_new_tokens=200)
    print(prompt + text_model.tokenizer.decode(greedy.tokens[0]))
    print(f"--- greedy Jacobi with the n-gram pool: {greedy.stats.forward_passes} passes for 200 tokens "
          "(greedy AR needs 200, and gives exactly this text)\n")
    sampled = generate(text_model.model, tokens, method="sjd", window=16, temperature=0.8, max_new_tokens=200,
                       generator=torch.Generator().manual_seed(0))
    print(prompt + text_model.tokenizer.decode(sampled.tokens[0]))
    print(f"--- SJD at temperature 0.8: {sampled.stats.forward_passes} passes for 200 tokens\n")
    config = TextBenchConfig(max_new_tokens=100 if quick else 200, seeds=(0,) if quick else (0, 1))
    print(bench_text(config, text_model=text_model).table())


def _train(args: argparse.Namespace) -> int:
    import importlib

    module, fixed = TRAINERS[args.target]
    importlib.import_module(module).main([*fixed, *args.options])
    return 0


if __name__ == "__main__":
    sys.exit(main())
