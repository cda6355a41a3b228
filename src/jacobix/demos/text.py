"""The text table of ``jacobix demo``: the bundled model's decoders, and a distilled student beside them.

The bundled ``shakespeare`` model was never trained for Jacobi decoding: it accepts about one
draft per pass, so on a CPU, where a wide pass costs more than a one-token pass, its parallel
rows are slower than sequential decoding in wall time. The consistency-distilled student
``shakespeare-cllm-ar1`` was trained to converge several tokens per pass and is faster than its
own sequential decoding in wall time on a 2-core CPU; the demo runs it too so that a first run
shows both. The table is a list of :class:`Column`; a new column is one more entry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from jacobix.bench.text import DEFAULT_SETTINGS, Setting, TextBenchConfig, TextBenchResult, bench_text
from jacobix.tokens.decoding import Decoding

STUDENT = "shakespeare-cllm-ar1"
STUDENT_SETTINGS = (  # the student's sequential row, and the fixed wide window it was distilled for
    Setting(label="ar greedy", decoding=Decoding(method="ar")),
    Setting(label="jacobi w16 context", decoding=Decoding(method="jacobi", window=16, init="context")),
)


@dataclass(frozen=True)
class DemoRow:
    """One decoding setting on one model, with its ratios to that model's sequential row."""

    model: str
    setting: str
    passes: int
    tokens: int
    wall_s: float
    passes_vs_ar: float
    wall_vs_ar: float
    exact: bool | None  # greedy output equals the model's greedy AR output; None for sampled rows
    note: str = ""

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / max(self.passes, 1)


@dataclass(frozen=True)
class Column:
    """A column of the demo table: its header, its width, and how a row fills it."""

    header: str
    width: int
    cell: Callable[[DemoRow], str]
    left: bool = False


COLUMNS: list[Column] = [
    Column("model", 21, lambda r: r.model, left=True),
    Column("setting", 19, lambda r: r.setting, left=True),
    Column("passes", 7, lambda r: str(r.passes)),
    Column("tokens", 7, lambda r: str(r.tokens)),
    Column("tok/pass", 8, lambda r: f"{r.tokens_per_pass:.2f}"),
    Column("wall s", 7, lambda r: f"{r.wall_s:.2f}"),
    Column("passes vs AR", 12, lambda r: f"{r.passes_vs_ar:.2f}x"),
    Column("wall vs AR", 10, lambda r: f"{r.wall_vs_ar:.2f}x"),
    Column("exact", 5, lambda r: "-" if r.exact is None else ("yes" if r.exact else "NO")),
    Column("", 0, lambda r: r.note, left=True),
]


def demo_table(rows: list[DemoRow], columns: list[Column] = COLUMNS) -> str:
    """The rows under their headers, every cell as wide as its header's column."""
    def line(cells: list[str]) -> str:
        return " ".join(c.ljust(col.width) if col.left else c.rjust(col.width) for col, c in zip(columns, cells)).rstrip()

    head = line([c.header for c in columns])
    return "\n".join([head, "-" * len(head)] + [line([c.cell(row) for c in columns]) for row in rows])


def rows_of(result: TextBenchResult) -> list[DemoRow]:
    """A bench result as demo rows (ratios against the same model's AR row of the same mode)."""
    out = []
    for row, record in zip(result.rows, result.records()):
        out.append(DemoRow(model=row.model or result.config.model, setting=row.setting.label, passes=row.passes,
                           tokens=row.tokens, wall_s=row.wall_s, passes_vs_ar=record["passes_vs_ar"],
                           wall_vs_ar=record["wall_vs_ar"], exact=record["exact"]))
    return out


def _student_note(row: DemoRow) -> str:
    if row.setting.startswith("ar"):
        return "distilled student, sequential"
    faster = "faster" if row.wall_vs_ar > 1 else "not faster"
    return f"distilled student: {faster} than sequential in wall time here"


def demo_rows(text_model, *, quick: bool) -> tuple[list[DemoRow], TextBenchResult]:
    """The bundled model's bench rows, then the distilled student's (same prompts and seeds)."""
    config = TextBenchConfig(max_new_tokens=100 if quick else 200, seeds=(0,) if quick else (0, 1),
                             settings=DEFAULT_SETTINGS)
    teacher = bench_text(config, text_model=text_model)
    student = bench_text(dataclasses.replace(config, model=STUDENT, settings=STUDENT_SETTINGS))
    rows = rows_of(teacher)
    rows += [dataclasses.replace(r, note=_student_note(r)) for r in rows_of(student)]
    return rows, teacher


def footer(result: TextBenchResult) -> str:
    """What the ratios mean, and how they were measured."""
    c = result.config
    threads = torch.get_num_threads()
    seeds = f"{len(c.seeds)} seed{'' if len(c.seeds) == 1 else 's'}"
    lines = [f"{len(c.prompts)} prompts x {seeds} x {c.max_new_tokens} new tokens on {c.device}, "
             f"{threads} CPU thread{'' if threads == 1 else 's'}; sampled rows at temperature {c.sampling.temperature}.",
             "x vs AR = the model's own sequential (AR) row of the same mode / this row, per generated token; "
             "above 1.00x is faster.",
             f"{c.model} was never trained for parallel decoding (about one draft accepted per pass); {STUDENT} is "
             "distilled from it to converge several tokens per pass, and its text is its own."]
    if result.pass_costs:
        costs = ", ".join(f"w{w} {v:.2f}x" for w, v in sorted(result.pass_costs.items()) if w in (2, 4, 8, 16))
        lines.append(f"measured cost of a pass vs a one-token pass (window='auto' plans with it): {costs}")
    return "\n".join(lines)


__all__ = ["COLUMNS", "Column", "DemoRow", "STUDENT", "STUDENT_SETTINGS", "demo_rows", "demo_table", "footer", "rows_of"]
