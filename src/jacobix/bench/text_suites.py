"""Suites of ``jacobix bench text --suite S``: prompts whose output can be checked, a student beside its
teacher, and the quality figure each model earns with greedy sequential decoding (every greedy
Jacobi row equals it token for token, so it is the quality of every greedy row).

- ``arith``: the worked-arithmetic model (:mod:`jacobix.eval.worked_arith`) and its Jacobi Forcing
  student; quality = greedy accuracy on the held-out problems, with a 95% Wilson interval.
- ``shakespeare``: the Shakespeare model and a distilled student (``shakespeare-cllm``, or a Jacobi
  Forcing student given as ``--model``); quality = validation loss on the plays' held-out split
  (``--data``) and the rate of repeated 4-grams in the timed prompts' greedy outputs.
- ``humaneval``: SmolLM2-135M-Instruct (or a model folder); quality = pass@1 of its greedy
  completions, each run by :mod:`jacobix.eval.humaneval`'s sandboxed runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jacobix.bench.text_settings import DEFAULT_PROMPTS, Setting, _row
from jacobix.eval import worked_arith
from jacobix.eval.plays import held_out_split, read_plays, validation_loss
from jacobix.eval.repetition import repeat_ngram_rate
from jacobix.models.registry import TextModel
from jacobix.robot.rollout import wilson_interval
from jacobix.tokens.decoding import Decoding
from jacobix.tokens.proposers.ngram import LookaheadConfig
from jacobix.tokens.width.multiblock import MultiBlock

SUITE_NAMES = ("arith", "shakespeare", "humaneval")


@dataclass(frozen=True, kw_only=True)
class QualityInputs:
    """What a suite's quality figure reads: ``problems`` to score, the plays (``data``), and the greedy
    outputs of the timed prompts (``outputs``, token lists, from the model's AR row)."""

    problems: int
    data: Path | None
    outputs: list[list[int]]


@dataclass(frozen=True, kw_only=True)
class Suite:
    """One suite.

    Attributes:
        name: ``--suite`` value.
        model, teacher: the default model and its teacher (None: the model runs alone).
        prompts: ``prompts(count) -> texts`` of the timed prompts.
        settings: the decoding rows.
        max_new_tokens: tokens per timed prompt (generation also stops at the model's end token).
        quality: ``quality(text_model, inputs) -> record`` of one model (greedy, sequential).
        needs_data: the suite reads the plays (``--data``).
        timed: timed prompts by default (``--quick``, else).
        problems: problems the quality figure is measured on by default.
    """

    name: str
    model: str
    teacher: str | None
    prompts: Callable[[int], tuple[str, ...]]
    settings: tuple[Setting, ...]
    max_new_tokens: int
    quality: Callable[[TextModel, QualityInputs], dict]
    needs_data: bool = False
    timed: tuple[int, int] = (8, 40)
    problems: int = 0


def _spec(label: str, **fields) -> Setting:
    return Setting(label=label, decoding=Decoding(method="jacobi", init="context", **fields))


RECYCLE = LookaheadConfig(verify=4)  # the n-gram pool of the text and past sweeps' outputs, 4 candidates a pass
JACOBI_FORCING_SETTINGS = (  # greedy: the student's and the teacher's own output, token for token
    _row("ar greedy", "ar"),
    _spec("jacobi block16", window=16, block=True),  # one block at a time (CLLM's and Jacobi Forcing's single block)
    _spec("multiblock 16x2", multiblock=MultiBlock(block=16, blocks=2)),
    _spec("multiblock 16x2 recycle", multiblock=MultiBlock(block=16, blocks=2), lookahead=RECYCLE),
    _spec("jacobi w16", window=16),
    _spec("jacobi w32", window=32),
    _spec("jacobi w32 recycle", window=32, lookahead=RECYCLE),
    _spec("jacobi auto", window="auto"),
)


def _arith_prompts(count: int) -> tuple[str, ...]:
    return tuple(p.prompt for p in worked_arith.problems(count, worked_arith.HELDOUT_SEED))


def _arith_quality(text_model: TextModel, inputs: QualityInputs) -> dict:
    held = worked_arith.problems(inputs.problems, worked_arith.HELDOUT_SEED)
    score = worked_arith.accuracy(text_model.model, text_model.tokenizer.alphabet, held)
    return {"accuracy": round(score, 4), **_interval("accuracy", round(score * len(held)), len(held)), "problems": len(held)}


def _interval(name: str, right: int, total: int) -> dict:
    low, high = wilson_interval(right, total)
    return {f"{name}_interval": [round(low, 4), round(high, 4)]}


def _plays_prompts(count: int) -> tuple[str, ...]:
    return DEFAULT_PROMPTS[:count]


def _plays_quality(text_model: TextModel, inputs: QualityInputs) -> dict:
    held = text_model.tokenizer.encode(held_out_split(read_plays(inputs.data)))
    rates = [repeat_ngram_rate(t) for t in inputs.outputs]
    return {"val_loss": round(validation_loss(text_model.model, held), 4),
            "repeat_4gram_rate": round(sum(rates) / len(rates), 4)}


def _humaneval_prompts(count: int) -> tuple[str, ...]:
    from jacobix.eval.humaneval import load_problems

    return tuple(p.prompt for p in load_problems()[:count])


def _humaneval_quality(text_model: TextModel, inputs: QualityInputs) -> dict:
    from jacobix.eval.humaneval import load_problems, run_completion, truncate
    from jacobix.api import generate

    problems = load_problems()[: inputs.problems]
    encode = text_model.tokenizer.tokenizer.encode
    passed = 0
    for problem in problems:
        ids = encode(problem.prompt, add_special_tokens=False)
        out = generate(text_model.model, [ids], decoding=Decoding(method="ar"), max_new_tokens=HUMANEVAL_TOKENS,
                       eos_token_id=text_model.eos_token_id).tokens[0]
        passed += run_completion(problem, truncate(text_model.tokenizer.decode(out))).passed
    return {"pass_at_1": round(passed / len(problems), 4), **_interval("pass_at_1", passed, len(problems)),
            "problems": len(problems)}


HUMANEVAL_TOKENS = 256

SUITES = {
    "arith": Suite(name="arith", model="arith-jf", teacher="arith", prompts=_arith_prompts,
                   settings=JACOBI_FORCING_SETTINGS, max_new_tokens=worked_arith.max_worked_length(),
                   quality=_arith_quality, problems=1000),
    "shakespeare": Suite(name="shakespeare", model="shakespeare-cllm", teacher="shakespeare", prompts=_plays_prompts,
                         settings=JACOBI_FORCING_SETTINGS, max_new_tokens=200, quality=_plays_quality, needs_data=True,
                         timed=(2, 4)),
    "humaneval": Suite(name="humaneval", model="smollm2", teacher=None, prompts=_humaneval_prompts,
                       settings=JACOBI_FORCING_SETTINGS, max_new_tokens=HUMANEVAL_TOKENS, quality=_humaneval_quality,
                       timed=(2, 10), problems=164),
}


def get_suite(name: str) -> Suite:
    """The suite named ``name`` (ValueError naming ``--suite`` and the known ones)."""
    if name not in SUITES:
        raise ValueError(f"--suite {name!r}: unknown; use one of {', '.join(SUITE_NAMES)}")
    return SUITES[name]


def suite_config(name: str, *, model: str | None, teacher: str | None, prompts: int | None, quick: bool,
                 problems: int | None, data: Path | None, seeds: tuple[int, ...], device: str) -> dict:
    """The fields of suite ``name``'s :class:`~jacobix.bench.text.TextBenchConfig` (None: the suite's default);
    refuses a suite that reads the plays without ``data``."""
    from jacobix.eval.plays import check_plays

    suite = get_suite(name)
    if suite.needs_data:
        check_plays(data)
    count = prompts or suite.timed[0 if quick else 1]
    return dict(model=model or suite.model, teacher=teacher or suite.teacher, prompts=suite.prompts(count),
                settings=suite.settings, max_new_tokens=suite.max_new_tokens, seeds=seeds, device=device,
                suite=suite.name, quality_problems=problems or suite.problems, data=data)


__all__ = ["JACOBI_FORCING_SETTINGS", "QualityInputs", "SUITES", "SUITE_NAMES", "Suite", "get_suite", "suite_config"]
