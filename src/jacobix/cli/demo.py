"""``jacobix demo``: the text comparison, then the pictures."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from jacobix.api import generate, load_text_model
from jacobix.cli.flags import Help, check_writable
from jacobix.core.sampling import SamplingConfig
from jacobix.tokens.decoding import Decoding


def add_parser(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="the main demo: text comparison, then pictures", formatter_class=Help)
    demo.add_argument("target", nargs="?", default="all", choices=("all", "text", "images", "tarflow"),
                      help="which part of the demo")
    demo.add_argument("--out", type=Path, default=Path("jacobix-out"),
                      help="folder for the pictures (images/ and tarflow/ inside); checked for writing first")
    demo.add_argument("--quick", action="store_true", help="fewer samples (the text part is always quick under 'all')")
    demo.set_defaults(run=run, check=check)


def check(args: argparse.Namespace) -> None:
    if args.target == "text":
        if "out" in args.explicit:
            raise ValueError("--out: demo text writes no files; --out applies to demo images, tarflow and all")
        return
    for part in ("images", "tarflow") if args.target == "all" else (args.target,):
        check_writable(args.out / part, "--out")


def run(args: argparse.Namespace) -> int:
    if args.target in ("all", "text"):
        text_demo(quick=args.quick or args.target == "all")
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


def text_demo(*, quick: bool) -> None:
    from jacobix.demos.text import demo_rows, demo_table, footer

    text_model = load_text_model("shakespeare")
    prompt = "ROMEO:\n"
    print("jacobix demo: the bundled character-level Shakespeare model (", end="")
    print(f"{sum(p.numel() for p in text_model.model.parameters()):,} parameters)\n")
    tokens = text_model.tokenizer.encode(prompt)
    greedy = generate(text_model.model, tokens, decoding=Decoding(method="jacobi", window="auto", lookahead=True,
                                                                   init="repeat"), max_new_tokens=200)
    print(prompt + text_model.tokenizer.decode(greedy.tokens[0]))
    print(f"--- greedy Jacobi with the n-gram pool: {greedy.stats.forward_passes} passes for 200 tokens "
          "(greedy AR needs 199 after the prefill, and gives exactly this text)\n")
    sampled = generate(text_model.model, tokens, decoding=Decoding(method="sjd", window=16),
                       sampling=SamplingConfig(temperature=0.8), max_new_tokens=200, generator=torch.Generator().manual_seed(0))
    print(prompt + text_model.tokenizer.decode(sampled.tokens[0]))
    print(f"--- SJD at temperature 0.8: {sampled.stats.forward_passes} passes for 200 tokens\n")
    rows, result = demo_rows(text_model, quick=quick)
    print(demo_table(rows))
    print(footer(result))


__all__ = ["add_parser", "check", "run", "text_demo"]
