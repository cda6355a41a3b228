"""Worked arithmetic: multi-step sums whose steps are written out, a text task with checkable answers.

A problem is a chain of single-digit additions and subtractions, its terms named by letters; the
worked answer writes every step with the running total, then the result::

    prompt       a7b+5c+9d-3:
    worked       a07,b+5=12,c+9=21,d-3=18;18
    then         a newline (the end of the answer, ``END``)

Running totals stay in 0..99 and are always written with two digits (a subtraction is only drawn
when it keeps the total at or above 0, an addition when it keeps it below 100). Every character
is one token (:data:`ALPHABET`). A step names its term by letter, so it is found by content, not
by counting, and every step has the same width, so where each character goes never depends on
a result: most of a worked answer is copied (the term from the prompt), two characters per step
are computed. A model that has learnt the task can be asked for many tokens per pass. Held-out
sets are fixed by their seed, and training text is drawn from other seeds (:data:`HELDOUT_SEED`
is never used for training).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

ALPHABET = "\n+,-0123456789:;=abcdefgh"
END = "\n"
MIN_TERMS, MAX_TERMS = 3, 8
LETTERS = "abcdefgh"  # the terms' names
HELDOUT_SEED = 31_415  # the bench's held-out problems
VALIDATION_SEED = 27_182  # model selection during training
_ANSWER = re.compile(r";(\d\d)\n")


@dataclass(frozen=True)
class Problem:
    """One worked-arithmetic problem.

    Attributes:
        prompt: the question, e.g. ``a7b+5c+9:``.
        worked: the worked answer after the prompt, e.g. ``a07,b+5=12,c+9=21;21`` plus :data:`END`.
        answer: the result.
    """

    prompt: str
    worked: str
    answer: int


def make_problem(rng: random.Random, terms: int | None = None) -> Problem:
    """A random problem of ``terms`` numbers (default: uniform in 3..8)."""
    terms = rng.randint(MIN_TERMS, MAX_TERMS) if terms is None else terms
    if not 2 <= terms <= len(LETTERS):
        raise ValueError(f"a worked-arithmetic problem has 2..{len(LETTERS)} terms, got {terms}")
    total = rng.randint(1, 9)
    question, steps = [f"a{total}"], [f"a{total:02d}"]
    for index in range(1, terms):
        digit = rng.randint(1, 9)
        ops = [op for op, value in (("+", total + digit), ("-", total - digit)) if 0 <= value <= 99]
        op = rng.choice(ops)
        total = total + digit if op == "+" else total - digit
        term = f"{LETTERS[index]}{op}{digit}"
        question.append(term)
        steps.append(f"{term}={total:02d}")
    return Problem(prompt="".join(question) + ":", worked=",".join(steps) + f";{total:02d}{END}", answer=total)


def problems(count: int, seed: int) -> list[Problem]:
    """``count`` problems drawn from ``seed`` (the same seed gives the same problems)."""
    rng = random.Random(seed)
    return [make_problem(rng) for _ in range(count)]


def training_text(characters: int, seed: int) -> str:
    """Problems with their worked answers, one per line, until ``characters`` characters."""
    if seed in (HELDOUT_SEED, VALIDATION_SEED):
        raise ValueError(f"seed {seed} draws the held-out or validation problems; train on another seed")
    rng, parts, size = random.Random(seed), [], 0
    while size < characters:
        problem = make_problem(rng)
        parts.append(problem.prompt + problem.worked)
        size += len(parts[-1])
    return "".join(parts)


def answer_of(text: str) -> int | None:
    """The result a worked answer states (``...;26`` + END), or None when it states none."""
    found = _ANSWER.search(text if text.endswith(END) else text + END)
    return int(found.group(1)) if found else None


def is_correct(problem: Problem, completion: str) -> bool:
    """True when ``completion`` (the text generated after the prompt) states the right result."""
    return answer_of(completion) == problem.answer


def max_worked_length(terms: int = MAX_TERMS) -> int:
    """Characters of a worked answer of ``terms`` numbers (``a09``, steps ``,b+9=99``, ``;99``, END): every
    answer of that many terms has this length."""
    return len("a09") + (terms - 1) * len(",b+9=99") + len(";99") + len(END)


@torch.no_grad()
def accuracy(model, alphabet: str, items: list[Problem], *, batch_size: int = 100) -> float:
    """Fraction of ``items`` whose greedy (sequential) answer is right, decoded in batches."""
    from jacobix.models.text import CharTokenizer
    from jacobix.tokens.decoding import Decoding
    from jacobix.tokens.generate import generate

    tokenizer = CharTokenizer(alphabet)
    end = tokenizer.encode(END).tolist()
    right = 0
    for begin in range(0, len(items), batch_size):
        chunk = items[begin : begin + batch_size]
        result = generate(model, [tokenizer.encode(p.prompt) for p in chunk], Decoding(method="ar"),
                          max_new_tokens=max_worked_length(), eos_token_id=end)
        right += sum(is_correct(p, tokenizer.decode(t)) for p, t in zip(chunk, result.tokens))
    return right / len(items)


__all__ = ["ALPHABET", "END", "HELDOUT_SEED", "Problem", "VALIDATION_SEED", "accuracy", "answer_of", "is_correct",
           "make_problem", "max_worked_length", "problems", "training_text"]
