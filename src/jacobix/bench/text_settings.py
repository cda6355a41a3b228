"""The settings ``jacobix bench text`` runs: prompts, and the decoding rows per kind of model."""

from __future__ import annotations

from dataclasses import dataclass, field

from jacobix import assets
from jacobix.models.registry import distilled_teacher
from jacobix.tokens.decoding import Decoding
from jacobix.tokens.proposers.ngram import LookaheadConfig

DEFAULT_PROMPTS = (
    "ROMEO:\n",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "KING HENRY:\nOnce more unto the breach, dear friends, once more;\n",
    "HAMLET:\nTo be, or not to be, that is the question:\n",
)


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One decoding configuration of the benchmark: a label, the spec it runs, and whether it samples
    (sampled rows draw from the benchmark's ``sampling``). ``baseline`` names a transformers
    ``generate`` row instead ("hf": greedy, "hf-pld": prompt lookup)."""

    label: str
    decoding: Decoding = field(default_factory=Decoding)
    sampled: bool = False
    baseline: str | None = None

    @property
    def method(self) -> str:
        return self.baseline or self.decoding.method

    @property
    def window(self) -> int | str:
        return self.decoding.window

    @property
    def block(self) -> bool:
        return self.decoding.block

    @property
    def adaptive(self) -> bool:
        """True for a jacobix row whose width the policy chooses (``window="auto"``, not sequential)."""
        return self.baseline is None and self.decoding.adaptive


def _row(label: str, method: str, window: int | str = 1, init: str = "random", *, sampled: bool = False,
         pool: int = 0, block: bool = False) -> Setting:
    """A bench row; ``pool`` > 0 drafts from the n-gram pool, verifying that many candidates per pass."""
    lookahead = LookaheadConfig(verify=pool) if pool else False
    return Setting(label=label, sampled=sampled,
                   decoding=Decoding(method=method, window=window, init=init, lookahead=lookahead, block=block))


DEFAULT_SETTINGS = (
    _row("ar greedy", "ar"),
    _row("jacobi w16 random", "jacobi", 16),
    _row("jacobi w16 repeat", "jacobi", 16, "repeat"),
    _row("jacobi auto", "jacobi", "auto", "repeat"),
    _row("jacobi auto+pool", "jacobi", "auto", "repeat", pool=1),
    _row("ar sample", "ar", sampled=True),
    _row("sjd w16 random", "sjd", 16, sampled=True),
    _row("sjd w16 repeat", "sjd", 16, "repeat", sampled=True),
    _row("sjd auto", "sjd", "auto", "repeat", sampled=True),
    _row("sjd auto+pool", "sjd", "auto", "repeat", sampled=True, pool=1),
)


CLLM_SETTINGS = (  # a consistency-distilled model and its teacher, side by side
    _row("ar greedy", "ar"),
    _row("jacobi w16 random", "jacobi", 16),
    _row("jacobi w16 context", "jacobi", 16, "context"),
    _row("jacobi block16", "jacobi", 16, "context", block=True),
    _row("jacobi auto", "jacobi", "auto", "context"),
    _row("jacobi auto+pool", "jacobi", "auto", "context", pool=1),
    _row("ar sample", "ar", sampled=True),
    _row("sjd w16 context", "sjd", 16, "context", sampled=True),
    _row("sjd auto", "sjd", "auto", "context", sampled=True),
)


HF_PROMPTS = (
    "Write a short, friendly reply to a friend who invited me to a picnic on Saturday.",
    "Complete this Python function:\n```python\ndef fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Summarise this passage in two sentences: The Jacobi method solves a system of equations by updating "
    "every unknown at once from the previous guesses, and repeating until nothing changes. Applied to "
    "language models, it guesses a whole block of future tokens, checks them all in one pass of the model, "
    "and keeps the prefix that the model agrees with.",
    "Repeat the following line five times, one per line: the quick brown fox jumps over the lazy dog",
)

HF_SETTINGS = (
    Setting(label="hf greedy", baseline="hf"),
    _row("ar greedy", "ar"),
    Setting(label="hf prompt-lookup", baseline="hf-pld"),
    _row("jacobi w16", "jacobi", 16, "repeat"),
    _row("jacobi auto", "jacobi", "auto", "repeat"),
    _row("lookahead auto", "jacobi", "auto", "repeat", pool=1),
    _row("lookahead auto k4", "jacobi", "auto", "repeat", pool=4),
    _row("lookahead w11", "jacobi", 11, "repeat", pool=1),  # prompt lookup's 10 drafts
    _row("ar sample", "ar", sampled=True),
    _row("sjd auto", "sjd", "auto", "repeat", sampled=True),
    _row("sjd auto+pool", "sjd", "auto", "repeat", sampled=True, pool=1),
    _row("sjd auto+pool k4", "sjd", "auto", "repeat", sampled=True, pool=4),
)


def model_options(model: str, teacher: str | None = None) -> dict:
    """Prompts and settings for a model: chat prompts for smollm2; for a consistency-distilled model
    (or with ``teacher``), the CLLM settings, run beside the teacher."""
    if model in assets.names("hf-text"):
        return dict(prompts=HF_PROMPTS, settings=HF_SETTINGS, teacher=teacher)
    teacher = teacher or distilled_teacher(model)
    return dict(settings=CLLM_SETTINGS, teacher=teacher) if teacher else {}
