"""Generated answers of every arm on arithmetic programs (model selection and the bench).

Arms: ``nocot`` (answer right after the question), ``cot`` (explicit chain of thought decoded
token by token with :func:`jacobix.generate`), ``seq`` (sequential continuous CoT, c passes) and
``pccot`` (T Jacobi passes). Accuracy is always by generated answers, never teacher-forced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from jacobix.latent.arith import BOT, EOS, EOT, Program, encode
from jacobix.latent.model import LatentReasoner
from jacobix.latent.thoughts import answer
from jacobix.tokens.decoding import Decoding
from jacobix.tokens.generate import generate

ARMS: tuple[str, ...] = ("nocot", "cot", "seq", "pccot")


def encode_questions(programs: list[Program], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Right-padded question tokens (B, Q) and lengths (B,) of ``programs``."""
    rows = [encode(p.question) for p in programs]
    lengths = torch.tensor([len(r) for r in rows], device=device)
    questions = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        questions[i, : len(r)] = torch.tensor(r)
    return questions, lengths


@dataclass
class Answers:
    """Generated answers of one batch: ``tokens`` (B,) answer token ids (-1 where none was produced)
    and ``forward_passes``, the sequential model calls the batch took."""

    tokens: Tensor
    forward_passes: int


@torch.no_grad()
def arm_answers(model: LatentReasoner, programs: list[Program], arm: str, passes: int | None = None) -> Answers:
    """Greedy generated answers of ``model`` run as ``arm`` on one batch of programs (``passes``: T of
    the ``pccot`` arm; default the model's trained T)."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    device = model.lm.tok_embeddings.weight.device
    if arm in ("seq", "pccot"):
        questions, lengths = encode_questions(programs, device)
        result = answer(model, questions, lengths, method="sequential" if arm == "seq" else "jacobi", passes=passes)
        return Answers(tokens=result.tokens, forward_passes=result.forward_passes)
    prompt = list(model.latent.prompt)
    if arm == "nocot":
        rows = [encode(p.question) + [BOT, EOT, *prompt] for p in programs]
        questions, lengths = _pad(rows, device)
        logits = model.lm(questions)  # (B, L, V) causal: right pads are never attended
        last = logits[torch.arange(len(rows), device=device), lengths - 1]  # (B, V)
        return Answers(tokens=last.argmax(-1), forward_passes=1)
    budget = 4 * max(p.steps for p in programs) + len(prompt) + 3
    result = generate(model.lm, [encode(p.question) + [BOT] for p in programs], Decoding(method="ar"), max_new_tokens=budget,
                      eos_token_id=EOS)
    tokens = torch.tensor([_parse_answer(t.tolist(), prompt) for t in result.tokens], device=device)
    return Answers(tokens=tokens, forward_passes=result.stats.forward_passes)


def _parse_answer(generated: list[int], prompt: list[int]) -> int:
    """The token after ``<eot> prompt`` in a generated explicit chain of thought, or -1."""
    if EOT not in generated:
        return -1
    start = generated.index(EOT) + 1
    if generated[start : start + len(prompt)] != prompt or len(generated) <= start + len(prompt):
        return -1
    return generated[start + len(prompt)]


def _pad(rows: list[list[int]], device: torch.device | str) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(r) for r in rows], device=device)
    out = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out, lengths


def correct(model: LatentReasoner, programs: list[Program], arm: str, passes: int | None = None, *,
            batch_size: int = 500) -> int:
    """How many of ``programs`` get the right generated answer (``passes``: T of the ``pccot`` arm)."""
    right = 0
    for i in range(0, len(programs), batch_size):
        chunk = programs[i : i + batch_size]
        tokens = arm_answers(model, chunk, arm, passes).tokens.cpu()
        right += int((tokens == torch.tensor([encode(str(p.answer))[0] for p in chunk])).sum())
    return right


def accuracy(model: LatentReasoner, programs: list[Program], arm: str, *, batch_size: int = 500) -> float:
    """Fraction of ``programs`` whose generated answer is right."""
    return correct(model, programs, arm, batch_size=batch_size) / max(len(programs), 1)


__all__ = ["ARMS", "Answers", "accuracy", "arm_answers", "correct", "encode_questions"]
