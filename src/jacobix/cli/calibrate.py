"""``jacobix calibrate``: measure pass costs by width and batch size, keep them where ``window="auto"`` finds them."""

from __future__ import annotations

import argparse
from pathlib import Path

from jacobix import assets
from jacobix.cli.flags import Help, add_spec_arguments, check_device, check_writable, count, specs_from_args
from jacobix.cli.models import bundled


def add_parser(commands: argparse._SubParsersAction) -> None:
    from jacobix.tokens.calibrate import DEFAULT_BATCH_SIZES

    command = commands.add_parser(
        "calibrate", formatter_class=Help,
        help="measure what a pass of k tokens and B rows costs on this device (window='auto' plans with it)",
        description="Times whole decoding passes of 1 to 16 tokens against a one-token pass, for each batch size, "
                    "for one kind of pass (method, draft rule, greedy or sampled, guided or not), and writes the table "
                    "to jacobix's cache folder, where window='auto' finds it for this model, device, dtype, thread "
                    "count and kind of pass (or to --output). A kind never calibrated is measured by its first "
                    "window='auto' run.")
    command.add_argument("--model", default="shakespeare",
                         help=f"a bundled model ({bundled('text', 'hf-text', 'image')}) or a text checkpoint folder")
    command.add_argument("--device", default="cpu", help="torch device")
    command.add_argument("--batch-sizes", type=count, nargs="+", default=list(DEFAULT_BATCH_SIZES), metavar="B",
                         help="rows per pass to measure (image models with guidance run twice their images)")
    command.add_argument("--rounds", type=count, default=5, help="interleaved timing rounds per batch size (>= 3)")
    command.add_argument("--context", type=count, default=64,
                         help="tokens already in each row when the passes are timed (a typical mid-generation length)")
    command.add_argument("--output", type=Path, default=None, help="write the table here instead of the cache folder")
    command.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also draw c(k)/c(1) by batch size")
    command.add_argument("--cfg-scale", type=float, default=None,
                         help="time guided passes (classifier-free guidance; a batch size counts both halves)")
    add_spec_arguments(command, defaults=dict(method="jacobi", init="repeat", temperature=None),
                       methods=("jacobi", "sjd", "sjd-coupled"))
    command.set_defaults(run=run, check=check)


def check(args: argparse.Namespace) -> None:
    check_device(args.device, "--device")
    for option in ("window", "block", "lossy_sweep_cap", "lossy_settled"):
        if option in args.explicit:
            raise ValueError(f"--{option.replace('_', '-')}: calibrate times every width exactly; drop it")
    if args.method != "jacobi" and args.temperature is None:
        raise ValueError(f"--method {args.method} samples: give --temperature (e.g. 0.8), the one you decode with")
    if any(b < 1 for b in args.batch_sizes):
        raise ValueError("--batch-sizes: give whole numbers >= 1")
    if args.rounds < 3:
        raise ValueError(f"--rounds must be at least 3 (medians need a few rounds), got {args.rounds}")
    for option, path in (("--output", args.output), ("--plot", args.plot)):
        if path is not None:
            if path.is_dir():
                raise ValueError(f"{option} {path} is a folder; give a file name")
            check_writable(path.parent if str(path.parent) else Path("."), option)
    asset = assets.find(args.model)
    if asset is None and not Path(args.model).is_dir():
        raise ValueError(f"--model {args.model!r}: not a bundled model ({bundled('text', 'hf-text', 'image')}) "
                         "or a checkpoint folder")


def run(args: argparse.Namespace) -> int:
    from jacobix.tokens.calibrate import calibrate
    from jacobix.tokens.width.calibration import cache_path

    model = _load(args.model).to(args.device)
    decoding, sampling = specs_from_args(args, temperature=0.0 if args.temperature is None else args.temperature)
    calibration = calibrate(model, batch_sizes=args.batch_sizes, rounds=args.rounds, context=args.context,
                            decoding=decoding, sampling=sampling, guidance_scale=args.cfg_scale)
    path = calibration.save(args.output or cache_path(calibration.where))
    widths = sorted({w for shape in calibration.costs.values() for w in shape})
    print(f"cost of a pass over a one-token pass of as many rows: {calibration.where.describe()}")
    print(f"{'rows':>5} {'1 token':>9} " + " ".join(f"{f'k={w}':>6}" for w in widths[1:]))
    for rows, shape in sorted(calibration.costs.items()):
        cells = " ".join(f"{shape[w]:>5.2f}x" for w in widths[1:])
        print(f"{rows:>5} {calibration.seconds[rows] * 1e3:>7.2f}ms {cells}")
    print(f"wrote {path}")
    if args.plot is not None:
        from jacobix.eval.figures import plot_pass_costs

        print(f"wrote {plot_pass_costs(calibration, args.plot)}")
    return 0


def _load(name: str):
    asset = assets.find(name)
    if asset is not None and asset.kind == "image":
        from jacobix.images.model import load_image_model

        return load_image_model(name).transformer
    from jacobix.api import load_text_model

    return load_text_model(name).model
