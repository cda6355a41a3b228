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
from jacobix.api import load_text_model
from jacobix.tokens.calibrate import pass_cost, why_slower
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
    width: int | str = 1  # tokens per pass (or "auto")
    pass_cost: float | None = None  # cost of a pass of `width` tokens (at most 16 for auto) over a one-token pass

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
    Column("k-pass cost", 11, lambda r: "-" if r.pass_cost is None else
           f"{'k<=16' if r.width == 'auto' else f'k={r.width}'} {r.pass_cost:.2f}x"),
    Column("", 0, lambda r: r.note, left=True),
]


def demo_table(rows: list[DemoRow], columns: list[Column] = COLUMNS) -> str:
    """The rows under their headers, every cell as wide as its header's column."""
    def line(cells: list[str]) -> str:
        return " ".join(c.ljust(col.width) if col.left else c.rjust(col.width) for col, c in zip(columns, cells)).rstrip()

    head = line([c.header for c in columns])
    return "\n".join([head, "-" * len(head)] + [line([c.cell(row) for c in columns]) for row in rows])


def rows_of(result: TextBenchResult, model=None) -> list[DemoRow]:
    """A bench result as demo rows (ratios against the same model's AR row of the same mode); with
    ``model``, each parallel row shows the measured cost of its pass and, where it lost to
    sequential decoding in wall time, why."""
    out = []
    for row, record in zip(result.rows, result.records()):
        width = 1 if row.setting.decoding.spec.sequential else row.setting.window
        cost = None if model is None or width == 1 else pass_cost(model, 16 if width == "auto" else int(width))
        slow = cost is not None and record["wall_vs_ar"] < 1.0
        note = why_slower(16 if width == "auto" else int(width), cost, row.tokens_per_pass) if slow else ""
        out.append(DemoRow(model=row.model or result.config.model, setting=row.setting.label, passes=row.passes,
                           tokens=row.tokens, wall_s=row.wall_s, passes_vs_ar=record["passes_vs_ar"],
                           wall_vs_ar=record["wall_vs_ar"], exact=record["exact"], width=width, pass_cost=cost,
                           note=note))
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
    student_model = load_text_model(STUDENT)
    student = bench_text(dataclasses.replace(config, model=STUDENT, settings=STUDENT_SETTINGS), text_model=student_model)
    rows = rows_of(teacher, text_model.model)
    rows += [dataclasses.replace(r, note=r.note or _student_note(r)) for r in rows_of(student, student_model.model)]
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
    lines.append("k-pass cost = the measured cost of a pass of k tokens over a one-token pass on this device "
                 "(`jacobix calibrate` measures it; window='auto' plans with it).")
    return "\n".join(lines)


__all__ = ["COLUMNS", "Column", "DemoRow", "STUDENT", "STUDENT_SETTINGS", "demo_rows", "demo_table", "footer", "rows_of"]
