"""``jacobix bench batch``: batch generation on the local backend vs Ray Data with 1..N actors.

Every backend writes its own JSONL file from the same prompts; the table gives rows per second,
the ratio to the local backend, and whether each output file is byte-identical to the local one.
Ray times include starting the actors and loading one model in each (what a job pays); the local
cluster is started once, before the first Ray run, and is not timed.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from jacobix.batch import BatchSpec, ResultWriter, run_local
from jacobix.core.sampling import SamplingConfig
from jacobix.integrations.ray import require_ray, run_ray
from jacobix.tokens.decoding import Decoding

NAMES = ["ROMEO", "JULIET", "HAMLET", "KING LEAR", "OTHELLO", "PORTIA", "MACBETH", "BRUTUS", "VIOLA", "PROSPERO"]
OPENINGS = ["", "O ", "My lord, ", "Good morrow, ", "What ", "Now ", "I pray you, ", "Thou ", "Come, ", "Alas, "]


@dataclass(frozen=True, kw_only=True)
class BatchBenchConfig:
    rows: int = 200
    decoding: Decoding = field(default_factory=lambda: Decoding(method="sjd", window=16, init="repeat"))  # fixed: the engines must write identical rows
    sampling: SamplingConfig = SamplingConfig(temperature=0.8)
    max_new_tokens: int = 64
    batch_size: int = 8
    actors: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if self.rows < 1 or self.max_new_tokens < 1 or self.batch_size < 1 or not self.actors or min(self.actors) < 1:
            raise ValueError(f"BatchBenchConfig needs rows, max_new_tokens, batch_size and actors >= 1, got {self}")
        self.decoding.check(self.sampling)


def prompts(n: int) -> list[dict]:
    """``n`` distinct short prompts in the style of the plays."""
    return [{"id": i, "prompt": f"{NAMES[i % 10]}:\n{OPENINGS[(i // 10) % 10]}{'' if i < 100 else 'and '}"}
            for i in range(n)]


def bench_batch(config: BatchBenchConfig = BatchBenchConfig()) -> list[dict]:
    """One record per backend (its name under "engine", as the CLI flag): seconds, rows per second, ratio to local, identical output."""
    spec = BatchSpec(decoding=config.decoding, sampling=config.sampling, max_new_tokens=config.max_new_tokens,
                     batch_size=config.batch_size)
    rows, records = prompts(config.rows), []
    ray = require_ray()  # before any work: a missing Ray is an error with the install command
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "local.jsonl"
        start = time.perf_counter()
        with ResultWriter(local) as writer:
            run_local(spec, rows, writer)
        records.append(_record("local", 0, time.perf_counter() - start, len(rows), True))
        started = not ray.is_initialized()  # a cluster this process already joined is used as it is
        if started:
            ray.init(num_cpus=max(config.actors), include_dashboard=False, log_to_driver=False)
        try:
            for actors in config.actors:
                out = Path(folder) / f"ray{actors}.jsonl"
                start = time.perf_counter()
                with ResultWriter(out) as writer:
                    run_ray(spec, rows, writer, actors=actors)
                seconds = time.perf_counter() - start
                records.append(_record("ray", actors, seconds, len(rows), out.read_bytes() == local.read_bytes()))
        finally:
            if started:
                ray.shutdown()
    for record in records:
        record.update(ratio_to_local=round(record["rows_per_s"] / records[0]["rows_per_s"], 3), method=config.decoding.method,
                      max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, cpus=os.cpu_count())
    return records


def format_table(records: list[dict], config: BatchBenchConfig, load: float) -> str:
    lines = [f"{config.rows} prompts, {config.decoding.method}, {config.max_new_tokens} new tokens, batch size "
             f"{config.batch_size}, {os.cpu_count()} CPUs (1-minute load average at the start: {load:.1f})",
             f"{'engine':<10}{'actors':>7}{'seconds':>10}{'rows/s':>9}{'vs local':>10}  identical to local"]
    for r in records:
        lines.append(f"{r['engine']:<10}{r['actors'] or '-':>7}{r['seconds']:>10.1f}{r['rows_per_s']:>9.2f}"
                     f"{r['ratio_to_local']:>9.2f}x  {'yes' if r['identical_to_local'] else 'NO'}")
    return "\n".join(lines)


def _record(backend: str, actors: int, seconds: float, rows: int, identical: bool) -> dict:
    return {"engine": backend, "actors": actors, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 3),
            "identical_to_local": identical}


__all__ = ["BatchBenchConfig", "bench_batch", "format_table", "prompts"]
