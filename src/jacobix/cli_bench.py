"""``jacobix bench TARGET``: one function per target, each printing its table (and writing --json)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


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
