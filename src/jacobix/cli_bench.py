"""``jacobix bench TARGET``: one function per target, each printing its table (and writing --json)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jacobix import cli_args


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


def add_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure sequential vs parallel decoding side by side", formatter_class=cli_args.Help,
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
    bench.add_argument("--episodes-per-task", type=cli_args.positive, help="policy: held-out episodes per task (default: 300 episodes in all; --quick: 10)")
    bench.add_argument("--caps", type=cli_args.positive, nargs="+", default=[2, 3], help="policy: LOSSY sweep caps of the early-exit rows")
    bench.add_argument("--settle-bins", type=cli_args.count, nargs="+", default=[2],
                       help="policy: LOSSY relaxed early exit when no action token moved more than this many bins")
    bench.add_argument("--max-new-tokens", type=cli_args.positive, default=200, help="text: tokens per prompt and seed (--quick: 60)")
    bench.add_argument("--seeds", type=cli_args.positive, default=3, help="text, images: seeds per prompt / class (--quick: 1)")
    bench.add_argument("--batch-size", type=cli_args.positive, help="tarflow: samples per call (default 1); images: per batch (default 50)")
    bench.add_argument("--rows", type=cli_args.positive, default=200, help="batch: prompts in the job")
    bench.add_argument("--actors", type=cli_args.positive, nargs="+", default=[1, 2], help="batch: Ray actor counts to compare")
    bench.add_argument("--tolerance", type=cli_args.nonnegative, default=1e-4, help="tarflow: GS-Jacobi relative residual")
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
    bench.add_argument("--per-difficulty", type=cli_args.positive, default=2000, help="pccot: held-out programs per difficulty (--quick: 200)")
    bench.set_defaults(run=lambda args: run_bench(args), check=check)  # looked up when run


def check(args: argparse.Namespace) -> None:
    for name, (targets, why) in BENCH_OPTIONS.items():
        if name in args.explicit and args.target not in targets:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to bench {args.target} ({why}); "
                             f"it applies to bench {', '.join(targets)}")
    cli_args.check_device(args.device, args.target)
    if args.json is not None:
        cli_args.check_writable(args.json.parent, "--json")
    if args.target == "policy" and args.suite == "mt10":
        from jacobix.robot.metaworld import INSTALL, available

        if not available():
            raise ValueError(f"--suite mt10 runs Meta-World, which is not installed; install it with: {INSTALL}")
    if args.target == "tarflow" and args.quick and (args.batch_size or 1) > 8:
        raise ValueError(f"--batch-size {args.batch_size}: bench tarflow --quick draws 8 samples; use --batch-size <= 8")


def run_bench(args: argparse.Namespace) -> int:
    """Run ``jacobix bench TARGET`` (arguments already checked by the CLI); returns the exit status."""
    BENCHES[args.target](args, args.quick, tuple(range(args.seeds if "seeds" in args.explicit or not args.quick else 1)))
    return 0


def _text(args: argparse.Namespace, quick: bool, seeds: tuple[int, ...]) -> None:
    from jacobix.bench.text import TextBenchConfig, bench_text, model_options

    tokens = args.max_new_tokens if "max_new_tokens" in args.explicit or not quick else 60
    config = TextBenchConfig(**model_options(args.model, args.teacher), model=args.model, max_new_tokens=tokens,
                             seeds=seeds, device=args.device)
    result = bench_text(config)
    print(result.table())
    if args.per_prompt:
        print("\n" + result.prompt_table())
    if result.convergence_table():
        print("\n" + result.convergence_table())
    if result.samples:
        print("\n" + result.samples_table())
    if args.json:
        _write_json(args.json, result.records())


def _batch(args: argparse.Namespace, quick: bool, seeds: tuple[int, ...]) -> None:
    import os

    from jacobix.bench.batch import BatchBenchConfig, bench_batch, format_table

    config = BatchBenchConfig(rows=args.rows, max_new_tokens=args.max_new_tokens if "max_new_tokens" in args.explicit
                              else 64, batch_size=args.batch_size or 8, actors=tuple(args.actors))
    load = os.getloadavg()[0]
    records = bench_batch(config)
    print(format_table(records, config, load))
    if args.json:
        _write_json(args.json, records)


def _pccot(args: argparse.Namespace, quick: bool, seeds: tuple[int, ...]) -> None:
    from jacobix.bench.pccot import PccotBenchConfig, bench_pccot, table, write_json

    count = args.per_difficulty if "per_difficulty" in args.explicit or not quick else 200
    config = PccotBenchConfig(runs=_checkpoint_folders(args.runs), per_difficulty=count, latency_questions=10 if quick else 40)
    results = bench_pccot(config)
    print(table(results))
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")


def _tarflow(args: argparse.Namespace, quick: bool, seeds: tuple[int, ...]) -> None:
    from jacobix.bench.tarflow import TarFlowBenchConfig, bench_tarflow

    sizes = dict(num_samples=8, calibration_samples=64, reference_samples=500) if quick else {}
    config = TarFlowBenchConfig(batch_size=args.batch_size or 1, tolerance=args.tolerance, **sizes)
    print(bench_tarflow(config=config).table())


def _images(args: argparse.Namespace, quick: bool, seeds: tuple[int, ...]) -> None:
    from jacobix.bench.images import ImageBenchConfig, bench_images, grid_decoders

    grid = dict(decoders=grid_decoders()) if args.grid else {}
    config = ImageBenchConfig(batch_size=args.batch_size or 50, seeds=seeds, **grid, **(dict(per_class=1) if quick else {}))
    result = bench_images(config)
    print(result.table())
    if args.json:
        _write_json(args.json, result.records())


def _policy(args: argparse.Namespace, quick: bool, seeds: tuple[int, ...]) -> None:
    from jacobix.bench.policy import PolicyBenchConfig, bench_policy, table, write_json
    from jacobix.robot.suites import get_suite

    suite = get_suite(args.suite)
    teacher = args.teacher or suite.asset
    student = {None: f"{teacher}-ceed", "none": None}.get(args.student, args.student)
    per_task = args.episodes_per_task or (10 if quick else -(-300 // len(suite.tasks)))
    config = PolicyBenchConfig(suite=args.suite, teacher=teacher, student=student, episodes_per_task=per_task,
                               caps=tuple(args.caps), settle_bins=tuple(args.settle_bins), wall_chunks=10 if quick else 40)
    rows = bench_policy(config, log=print)
    print(table(rows, config))
    if args.json:
        write_json(args.json, rows, config)
        print(f"wrote {args.json}")


def _checkpoint_folders(paths: list[Path] | None) -> tuple[Path, ...]:
    """Checkpoint folders named by --runs: each path is one, or a folder of them."""
    folders = []
    for path in paths or []:
        if (path / "config.json").exists():
            folders.append(path)
        elif path.is_dir() and (found := sorted(p.parent for p in path.glob("*/config.json"))):
            folders.extend(found)
        else:
            raise ValueError(f"--runs {path}: no checkpoint (config.json) there or in its subfolders; "
                             "train one with `jacobix train pccot`")
    return tuple(folders)


BENCHES = {"text": _text, "batch": _batch, "pccot": _pccot, "tarflow": _tarflow, "images": _images, "policy": _policy}


def _write_json(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2) + "\n")
    print(f"wrote {path}")
