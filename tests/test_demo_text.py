"""The demo's text table: columns line up under their headers, and the distilled student's rows are there."""

from __future__ import annotations

import dataclasses

from jacobix.bench.text import TextBenchConfig, bench_text
from jacobix.demos.text import COLUMNS, STUDENT, STUDENT_SETTINGS, Column, DemoRow, demo_table, rows_of


def _row(**changes) -> DemoRow:
    row = DemoRow(model="shakespeare", setting="jacobi w16 random", passes=1481, tokens=1600, wall_s=4.572,
                  passes_vs_ar=1.07, wall_vs_ar=0.72, exact=True)
    return dataclasses.replace(row, **changes)


def test_every_cell_ends_under_its_header():
    rows = [_row(), _row(model=STUDENT, setting="jacobi w16 context", passes=384, wall_vs_ar=2.92, exact=None)]
    lines = demo_table(rows).splitlines()
    head = lines[0]
    for column in COLUMNS[2:-1]:  # right-aligned numbers: a cell ends where its header ends
        end = head.index(column.header) + len(column.header)
        for line in lines[2:]:
            assert line[end - 1] != " " and (end == len(line) or line[end] == " "), (column.header, line)


def test_a_new_column_is_one_entry():
    table = demo_table([_row()], [*COLUMNS[:-1], Column("c(16)/c(1)", 10, lambda r: "1.25x")])
    assert table.splitlines()[0].endswith("c(16)/c(1)") and table.splitlines()[2].endswith("1.25x")


def test_the_students_rows_are_exact_and_labelled():
    config = TextBenchConfig(model=STUDENT, settings=STUDENT_SETTINGS, prompts=("ROMEO:\n",), seeds=(0,),
                             max_new_tokens=24)
    rows = rows_of(bench_text(config))
    assert [r.setting for r in rows] == ["ar greedy", "jacobi w16 context"]
    assert all(r.model == STUDENT and r.exact for r in rows)
    assert rows[1].passes < rows[0].passes  # it converges several tokens per pass
