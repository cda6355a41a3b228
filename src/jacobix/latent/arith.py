"""Multi-step modular arithmetic programs, the problems jacobix's PCCoT models solve.

A program in GSM8K-Aug's equation style over the integers mod 23::

    a=7;b=a*5;c=b+a;d=c*c;?d

``steps`` operations follow the initial assignment; each combines the previous variable with an
earlier variable (not itself) or a constant 1..22 (``+``, ``-``, ``*``), so the answer needs
every step. The teacher
chain of thought is the intermediate results with the last step dropped (CODI's convention)::

    b=12;c=19;        answer 16

Every symbol is one token; numbers 0..22 are single tokens. Held-out sets are fixed by a seed.

Two suites share the vocabulary (``SUITES``):

- ``modular``: the programs above (a step's right operand is an earlier variable half the time).
- ``chain``: every right operand is a constant, ``a=3;b=a*4;c=b+2;d=c-1;?d``, so a written step is
  exactly one intermediate value computed from the one before: the suite on which a latent can be
  checked for carrying a step (``Program.values`` holds every intermediate value).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

MODULUS = 23
MIN_STEPS, MAX_STEPS = 1, 8
VARIABLES = "abcdefghi"
OPERATIONS = "+-*"
SPECIALS = ("<pad>", "<bot>", "<eot>", "<lat>", "<eos>", "answer", ":", "=", ";", "+", "-", "*", "?")
VOCAB: tuple[str, ...] = (*SPECIALS, *VARIABLES, *(str(v) for v in range(MODULUS)))
TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}
PAD, BOT, EOT, PLACEHOLDER, EOS = (TOKEN_ID[t] for t in ("<pad>", "<bot>", "<eot>", "<lat>", "<eos>"))
ANSWER_PROMPT: tuple[int, ...] = (TOKEN_ID["answer"], TOKEN_ID[":"])  # "The answer is:"
SUITES: tuple[str, ...] = ("chain", "modular")
HELDOUT_SEED = 20260  # the fixed held-out test set (bench)
VALIDATION_SEED = 777  # model selection during training; disjoint stream from the test set
_SYMBOL = re.compile(r"\d+|<[a-z]+>|[a-z]+|.")


@dataclass(frozen=True)
class Program:
    """One generated program.

    Attributes:
        question: the program text, e.g. ``a=7;b=a*5;?b``.
        cot: the teacher chain of thought, e.g. ``b=12;`` (empty for one step).
        answer: the value of the queried variable, 0..22.
        steps: number of operations.
        modulus: the values are integers mod this (23 by default; a smaller one is easier).
        values: every variable's value in order (``values[0]`` is ``a``, ``values[steps]`` the answer).
        suite: ``chain`` or ``modular``.
    """

    question: str
    cot: str
    answer: int
    steps: int
    modulus: int = MODULUS
    values: tuple[int, ...] = ()
    suite: str = "modular"


def encode(text: str) -> list[int]:
    """Token ids of a program text (every symbol one token; numbers whole)."""
    symbols = _SYMBOL.findall(text)
    unknown = sorted({s for s in symbols if s not in TOKEN_ID})
    if unknown:
        raise ValueError(f"symbols {unknown} are not in the arithmetic vocabulary")
    return [TOKEN_ID[s] for s in symbols]


def decode(tokens: list[int]) -> str:
    """Text of token ids (inverse of :func:`encode` on program texts)."""
    return "".join(VOCAB[t] for t in tokens)


def make_program(steps: int, rng: random.Random, modulus: int = MODULUS, suite: str = "modular") -> Program:
    """A random program of ``steps`` operations mod ``modulus`` drawn with ``rng``.

    Raises:
        ValueError: ``steps`` outside 1..8, ``modulus`` outside 2..23, or an unknown ``suite``.
    """
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be in {MIN_STEPS}..{MAX_STEPS}, got {steps}")
    _check_modulus(modulus)
    check_suite(suite)
    values = [rng.randrange(modulus)]
    lines = [f"a={values[0]}"]
    for i in range(1, steps + 1):
        op = rng.choice(OPERATIONS)
        if suite == "modular" and i >= 2 and rng.random() < 0.5:  # an earlier variable other than the left one (no x-x, x+x shortcuts)
            j = rng.randrange(i - 1)
            right, right_value = VARIABLES[j], values[j]
        else:
            right_value = rng.randrange(1, modulus)
            right = str(right_value)
        left = values[i - 1]
        result = left + right_value if op == "+" else left - right_value if op == "-" else left * right_value
        values.append(result % modulus)
        lines.append(f"{VARIABLES[i]}={VARIABLES[i - 1]}{op}{right}")
    question = ";".join(lines) + f";?{VARIABLES[steps]}"
    cot = "".join(f"{VARIABLES[i]}={values[i]};" for i in range(1, steps))  # last step dropped
    return Program(question=question, cot=cot, answer=values[steps], steps=steps, modulus=modulus, values=tuple(values),
                   suite=suite)


def evaluate_program(question: str, modulus: int = MODULUS) -> int:
    """Run a program text with an independent interpreter; returns the queried value."""
    env: dict[str, int] = {}
    *lines, query = question.split(";")
    for line in lines:
        name, expr = line.split("=")
        match = re.fullmatch(r"([a-z]|\d+)(?:([-+*])([a-z]|\d+))?", expr)
        if match is None:
            raise ValueError(f"cannot read the program line {line!r}")
        left, op, right = match.groups()
        value = env[left] if left.isalpha() else int(left)
        if op is not None:
            other = env[right] if right.isalpha() else int(right)
            value = {"+": value + other, "-": value - other, "*": value * other}[op]
        env[name] = value % modulus
    return env[query.lstrip("?")]


def program_set(steps: int, count: int, seed: int, modulus: int = MODULUS, suite: str = "modular") -> list[Program]:
    """``count`` programs of ``steps`` operations, fixed by ``seed`` (and ``steps``, ``modulus``, ``suite``)."""
    rng = random.Random((seed * 1000 + steps) * 100 + modulus + (0 if suite == "modular" else 7919))
    return [make_program(steps, rng, modulus, suite) for _ in range(count)]


def heldout_set(steps: int, count: int = 2000, modulus: int = MODULUS, suite: str = "modular") -> list[Program]:
    """The fixed held-out test set of one difficulty (2000 programs)."""
    return program_set(steps, count, HELDOUT_SEED, modulus, suite)


def check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")


def _check_modulus(modulus: int) -> None:
    if not 2 <= modulus <= MODULUS:
        raise ValueError(f"modulus must be in 2..{MODULUS} (the vocabulary holds 0..{MODULUS - 1}), got {modulus}")


__all__ = [
    "ANSWER_PROMPT", "BOT", "EOS", "EOT", "MODULUS", "PAD", "PLACEHOLDER", "Program", "SUITES", "TOKEN_ID", "VOCAB",
    "check_suite", "decode", "encode", "evaluate_program", "heldout_set", "make_program", "program_set",
]
