"""``jacobix generate-batch``: JSONL prompts (or class labels) in, JSONL results out, locally or on Ray."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from jacobix.batch.jobs import BAD_LINE_CHOICES, IMAGE_MODELS, TEXT_METHODS, BatchSpec, Job, ResultWriter, check_settings, open_job
from jacobix.batch.rows import BatchGenerator, run_local
from jacobix.cli.flags import Help, add_spec_arguments, nonnegative, positive, specs_from_args
from jacobix.cli.models import check_text_model, text_models

BACKENDS = ("local", "ray")
RAY_OPTIONS = ("actors", "address", "num_cpus", "gpus_per_actor")
SJD_TEMPERATURE = 0.8  # text rows; image rows sample at 1.0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``generate-batch`` command to the ``jacobix`` parser."""
    batch = commands.add_parser(
        "generate-batch", formatter_class=Help, help="generate for every line of a JSONL file (locally or on Ray)",
        description="Text rows {\"id\": ..., \"prompt\": \"...\"} or, with --model fmnist-ar, image rows {\"id\": ..., "
        "\"label\": 3}; one result line per row with its per-row stats. Run it again with the same --output to finish "
        "an interrupted job: finished rows are not redone. Each row samples from a seed made of --seed and its id, so "
        "the output does not depend on --backend, --actors or --batch-size.")
    batch.add_argument("--input", type=Path, required=True, help="JSONL file of rows")
    batch.add_argument("--output", type=Path, required=True, help="JSONL results (appended; finished ids are skipped)")
    batch.add_argument("--backend", choices=BACKENDS, default="local",
                       help="local: this process; ray: Ray Data map_batches on an actor pool (pip install 'jacobix[ray]')")
    batch.add_argument("--model", default="shakespeare",
                       help=f"a text model ({', '.join(text_models())}, or a checkpoint folder), or {', '.join(IMAGE_MODELS)} "
                       "(image rows: class labels in, PNG files out)")
    add_spec_arguments(batch, defaults=dict(method="jacobi", init="repeat", temperature=None), methods=TEXT_METHODS)
    batch.add_argument("--max-new-tokens", type=positive, default=64, help="text: tokens per row")
    batch.add_argument("--seed", type=int, default=0, help="base seed; each row's seed is made from it and the row id")
    batch.add_argument("--batch-size", type=positive, default=8, help="rows decoded together by one model")
    batch.add_argument("--on-bad-line", choices=BAD_LINE_CHOICES, default="error",
                       help="a malformed input line: error (refuse the job, listing line numbers) or skip (report each)")
    batch.add_argument("--image-dir", type=Path, default=None, help="images: PNG folder (default: OUTPUT's name without .jsonl, plus -png)")
    batch.add_argument("--cfg-scale", type=nonnegative, default=1.5, help="images: classifier-free guidance scale")
    batch.add_argument("--actors", type=positive, default=2, help="ray: model actors (one model each)")
    batch.add_argument("--address", default=None, help="ray: cluster address (e.g. auto); default: a local cluster")
    batch.add_argument("--num-cpus", type=positive, default=None, help="ray: CPUs of the local cluster (default: one per actor)")
    batch.add_argument("--gpus-per-actor", type=nonnegative, default=0.0, help="ray: GPUs reserved per actor (with --device cuda)")
    batch.add_argument("--device", default="cpu", help="text: torch device of each model (e.g. cuda)")
    batch.set_defaults(run=run, check=check)


def check(args: argparse.Namespace) -> None:
    """Refuse options that do not apply, paths that cannot work and a model that is missing or damaged,
    before any work (nothing is written until these pass)."""
    if args.backend != "ray":
        for name in RAY_OPTIONS:
            if name in args.explicit:
                raise ValueError(f"--{name.replace('_', '-')} applies to --backend ray only")
    else:
        from jacobix.integrations.ray.backend import check_resources

        check_resources(actors=args.actors, address=args.address, num_cpus=args.num_cpus,
                        gpus_per_actor=args.gpus_per_actor)
    if not args.input.is_file():
        raise ValueError(f"--input {args.input}: {'a folder' if args.input.is_dir() else 'no such file'}; give a JSONL file")
    if args.output.resolve() == args.input.resolve():
        raise ValueError("--output must differ from --input")
    check_output_file(args.output)
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {args.device!r} is not a torch device; use cpu or e.g. cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available() and args.backend == "local":
        raise ValueError(f"--device {args.device}: no CUDA device here; use --device cpu")
    spec = spec_from_args(args)  # the specs' own checks, before any file is read
    if not spec.images:
        check_text_model(args.model)


def check_output_file(path: Path) -> None:
    """Refuse an output that is a folder or lies under a regular file."""
    if path.is_dir():
        raise ValueError(f"--output {path} is a folder; give a .jsonl file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--output {path} lies under the file {parent}")
            return


def spec_from_args(args: argparse.Namespace) -> BatchSpec:
    images = args.model == "fmnist-ar"
    temperature = args.temperature
    if temperature is None:
        from jacobix.tokens.methods import get_method

        temperature = (1.0 if images else SJD_TEMPERATURE) if get_method(args.method).sampled else 0.0
    decoding, sampling = specs_from_args(args, temperature=temperature)
    image_dir = args.image_dir or args.output.with_name(args.output.stem + "-png")
    return BatchSpec(model=args.model, decoding=decoding, sampling=sampling, max_new_tokens=args.max_new_tokens,
                     seed=args.seed, batch_size=args.batch_size, cfg_scale=args.cfg_scale,
                     image_dir=str(image_dir) if images else None, device=args.device)


RAY_NOTE = ("jacobix: starting a local Ray cluster. Ray logs its own start-up lines: 'Token authentication is "
            "enabled' (the local cluster sets up its own token) and 'Actor ... has constructor arguments in the object "
            "store and max_restarts > 0' (a note on restarting a failed actor) and 'Progress bars disabled' (-v shows them) "
            "are expected and harmless.")


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    job = open_job(args.input, args.output, images=spec.images, on_bad_line=args.on_bad_line)
    generator = BatchGenerator(spec) if args.backend == "local" and job.rows else None  # loads before any file is written
    check_settings(args.output, spec)
    _report(job, args)
    start = time.perf_counter()
    with ResultWriter(args.output) as writer:
        if args.backend == "ray":
            from jacobix.integrations.ray import run_ray

            if args.address is None:
                print(RAY_NOTE, file=sys.stderr)
            written = run_ray(spec, job.rows, writer, actors=args.actors, address=args.address, num_cpus=args.num_cpus,
                              gpus_per_actor=args.gpus_per_actor, progress=args.verbose)
        else:
            written = run_local(spec, job.rows, writer, generator=generator)
    seconds = time.perf_counter() - start
    rate = f" ({written / seconds:.2f} rows/s)" if written and seconds > 0 else ""
    print(f"wrote {written} row(s) to {args.output} in {seconds:.1f} s{rate}")
    return 0


def _report(job: Job, args: argparse.Namespace) -> None:
    for bad in job.bad_lines:
        print(f"jacobix: skipped {args.input} {bad}", file=sys.stderr)
    if job.cut:
        print(f"jacobix: {args.output}: removed a torn last line ({job.cut} bytes) left by an interrupted run",
              file=sys.stderr)
    if job.finished:
        print(f"{job.finished} row(s) already in {args.output}; {len(job.rows)} to do")


__all__ = ["add_parser", "check", "run", "spec_from_args"]
