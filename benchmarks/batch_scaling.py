"""Throughput of batch generation: the local engine vs Ray Data with 1 and 2 actors, same rows.

    PYTHONPATH=src python benchmarks/batch_scaling.py --rows 200 --json benchmarks/cpu-batch.json

Every engine writes its own JSONL file from the same prompts; the table gives rows per second,
the ratio to the local engine, and whether the output file is byte-identical to the local one.
Ray times include starting the actors and loading one model in each (what a job pays); the
local cluster is started once, before the first Ray run, and not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from jacobix.batch import BatchSpec, ResultWriter, run_local
from jacobix.integrations.ray import require_ray, run_ray

NAMES = ["ROMEO", "JULIET", "HAMLET", "KING LEAR", "OTHELLO", "PORTIA", "MACBETH", "BRUTUS", "VIOLA", "PROSPERO"]
OPENINGS = ["", "O ", "My lord, ", "Good morrow, ", "What ", "Now ", "I pray you, ", "Thou ", "Come, ", "Alas, "]


def prompts(n: int) -> list[dict]:
    """``n`` distinct short prompts in the style of the plays."""
    return [{"id": i, "prompt": f"{NAMES[i % 10]}:\n{OPENINGS[(i // 10) % 10]}{'' if i < 100 else 'and '}"}
            for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--method", default="sjd", choices=("jacobi", "sjd", "ar"))
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    spec = BatchSpec(method=args.method, temperature=0.8 if args.method == "sjd" else 0.0,
                     max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    rows, records, load = prompts(args.rows), [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "local.jsonl"
        start = time.perf_counter()
        with ResultWriter(local) as writer:
            run_local(spec, rows, writer)
        records.append(_record("local", 0, time.perf_counter() - start, len(rows), True))
        ray = require_ray()
        ray.init(num_cpus=max(args.actors), include_dashboard=False, log_to_driver=False)
        try:
            for actors in args.actors:
                out = Path(folder) / f"ray{actors}.jsonl"
                start = time.perf_counter()
                with ResultWriter(out) as writer:
                    run_ray(spec, rows, writer, actors=actors)
                seconds = time.perf_counter() - start
                records.append(_record("ray", actors, seconds, len(rows), out.read_bytes() == local.read_bytes()))
        finally:
            ray.shutdown()
    base = records[0]["rows_per_s"]
    for record in records:
        record.update(ratio_to_local=round(record["rows_per_s"] / base, 3), method=args.method,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, cpus=os.cpu_count())
    print(f"{args.rows} prompts, {args.method}, {args.max_new_tokens} new tokens, batch size {args.batch_size}, "
          f"{os.cpu_count()} CPUs (1-minute load average at the start: {load:.1f})")
    print(f"{'engine':<10}{'actors':>7}{'seconds':>10}{'rows/s':>9}{'vs local':>10}  identical to local")
    for r in records:
        print(f"{r['engine']:<10}{r['actors'] or '-':>7}{r['seconds']:>10.1f}{r['rows_per_s']:>9.2f}"
              f"{r['ratio_to_local']:>9.2f}x  {'yes' if r['identical_to_local'] else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
        print(f"wrote {args.json}")


def _record(engine: str, actors: int, seconds: float, rows: int, identical: bool) -> dict:
    return {"engine": engine, "actors": actors, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 3),
            "identical_to_local": identical}


if __name__ == "__main__":
    main()
