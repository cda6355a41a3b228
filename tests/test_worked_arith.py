"""Worked arithmetic: generated problems, answers that check, the recipes that train on them."""

from __future__ import annotations

import json
import random

import pytest
import torch

from jacobix.eval import worked_arith as wa
from jacobix.api import load_text_model
from jacobix.train.recipes import arith, forcing


def test_a_worked_answer_follows_every_step_and_states_the_result():
    for problem in wa.problems(200, seed=5):
        terms = problem.prompt[:-1]
        steps = problem.worked[: -len(wa.END)].split(";")[0].split(",")
        total = int(steps[0][1:])
        assert steps[0] == f"a{int(terms[1]):02d}"
        for step in steps[1:]:
            assert len(step) == len("b+9=99")  # every step has the same width
            term, after = step.split("=")
            assert term in terms  # named by its letter, copied from the prompt
            total = total + int(term[2]) if term[1] == "+" else total - int(term[2])
            assert int(after) == total and 0 <= total <= 99
        assert problem.answer == total and wa.is_correct(problem, problem.worked)
        assert len(problem.worked) == wa.max_worked_length(len(steps))
        assert set(problem.prompt + problem.worked) <= set(wa.ALPHABET)


def test_answers_are_read_from_the_stated_result_only():
    problem = wa.make_problem(random.Random(0), terms=3)
    assert wa.answer_of("a01,b+2=03;03\n") == 3
    assert wa.answer_of("a01,b+2=03;03") == 3  # cut at the end character
    assert wa.answer_of("a01,b+2=03,c+1=04") is None  # no result stated
    assert wa.answer_of("a01,b+2=03;3\n") is None  # not two digits
    assert not wa.is_correct(problem, problem.worked.replace(f";{problem.answer:02d}", f";{problem.answer + 1:02d}"))


def test_held_out_problems_are_fixed_and_never_training_text():
    assert wa.problems(5, wa.HELDOUT_SEED) == wa.problems(5, wa.HELDOUT_SEED)
    for seed in (wa.HELDOUT_SEED, wa.VALIDATION_SEED):
        with pytest.raises(ValueError, match="held-out or validation"):
            wa.training_text(100, seed)
    with pytest.raises(ValueError, match="2..8 terms"):
        wa.make_problem(random.Random(0), terms=9)


def test_the_teacher_recipe_records_its_end_character_and_held_out_accuracy(tmp_path):
    out = tmp_path / "arith"
    args = arith.parse_args(["--out", str(out), "--steps", "3", "--dim", "16", "--layers", "1", "--heldout", "4",
                             "--batch-size", "2", "--seq-len", "32", "--warmup", "1"])
    arith.RECIPE.train(args)
    meta = json.loads((out / "config.json").read_text())
    assert meta["tokenizer"]["end"] == wa.END and 0 <= meta["heldout_accuracy"] <= 1 and meta["heldout_problems"] == 4
    model = load_text_model(str(out))
    assert model.eos_token_id == wa.ALPHABET.index(wa.END)


def test_a_bad_end_character_is_refused(tmp_path):
    out = tmp_path / "arith"
    arith.RECIPE.train(arith.parse_args(["--out", str(out), "--steps", "1", "--dim", "16", "--layers", "1",
                                         "--heldout", "1", "--batch-size", "1", "--seq-len", "16", "--warmup", "0"]))
    meta = json.loads((out / "config.json").read_text())
    meta["tokenizer"]["end"] = "#"
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="tokenizer.end must be one character of the alphabet"):
        load_text_model(str(out))


def test_the_forcing_recipe_refuses_a_teacher_that_does_not_exist_and_a_block_of_one(tmp_path):
    with pytest.raises(ValueError, match="--teacher nowhere"):
        forcing.parse_args(["--teacher", "nowhere", "--out", str(tmp_path / "s")])
    with pytest.raises(ValueError, match="--block-size must be >= 2"):
        forcing.parse_args(["--teacher", "arith", "--block-size", "1", "--out", str(tmp_path / "s")])


def test_the_forcing_recipe_trains_rounds_and_reports_student_beside_teacher(tmp_path):
    teacher = tmp_path / "teacher"
    arith.RECIPE.train(arith.parse_args(["--out", str(teacher), "--steps", "40", "--dim", "32", "--layers", "1",
                                         "--heldout", "2", "--batch-size", "8", "--seq-len", "64", "--lr", "1e-2"]))
    out = tmp_path / "student"
    args = forcing.parse_args(["--teacher", str(teacher), "--out", str(out), "--rounds", "2", "--prompts", "12",
                               "--held-out", "4", "--steps", "2", "--batch-size", "2", "--block-size", "8"])
    forcing.RECIPE.train(args)
    report = json.loads((out / "config.json").read_text())["jacobi_forcing"]
    assert len(report["rounds"]) == 2 and set(report["accuracy"]) == {"teacher", "student"}
    assert report["tokens_per_pass"]["student"] >= 1.0 and report["teacher"] == str(teacher)
    assert (out / "round-1" / "metrics.jsonl").is_file()
    assert load_text_model(str(out)).eos_token_id == wa.ALPHABET.index(wa.END)


def test_bench_suite_arith_reports_each_model_beside_its_teacher(tmp_path):
    import shutil

    from jacobix.bench.text import TextBenchConfig, bench_text
    from jacobix.bench.text_suites import get_suite

    teacher = tmp_path / "teacher"
    arith.RECIPE.train(arith.parse_args(["--out", str(teacher), "--steps", "30", "--dim", "32", "--layers", "1",
                                         "--heldout", "2", "--batch-size", "8", "--seq-len", "64", "--lr", "1e-2"]))
    student = tmp_path / "student"
    shutil.copytree(teacher, student)
    suite = get_suite("arith")
    config = TextBenchConfig(model=str(student), teacher=str(teacher), prompts=suite.prompts(2), settings=suite.settings,
                             max_new_tokens=suite.max_new_tokens, seeds=(0,), suite="arith", quality_problems=20)
    records = bench_text(config).records()
    assert len(records) == 2 * len(suite.settings)
    for record in records:
        assert {"suite", "model", "role", "setting", "tokens_per_pass", "wall_vs_ar", "exact"} <= set(record)
        assert record["exact"] is True and record["role"] == ("teacher" if record["model"] == str(teacher) else "student")
        assert ("accuracy" in record) == (record["setting"] == "ar greedy")
    ar_rows = [r for r in records if r["setting"] == "ar greedy"]
    assert ar_rows[0]["accuracy"] == ar_rows[1]["accuracy"]  # the same weights
    assert ar_rows[0]["accuracy_interval"][0] <= ar_rows[0]["accuracy"] <= ar_rows[0]["accuracy_interval"][1]
