"""Latents that carry the steps: the Coconut curriculum's stages and the step-value targets of
``jacobix train pccot`` (see :mod:`jacobix.train.recipes.pccot`)."""

from __future__ import annotations

import torch
from torch import Tensor

from jacobix.latent.arith import ANSWER_PROMPT, EOT
from jacobix.latent.model import LatentReasoner
from jacobix.latent.thoughts import AnswerOutput, Thoughts
from jacobix.train.losses import IGNORE


def curriculum_stage(step: int, per_stage: int, written: int) -> int | None:
    """Latents that replace written steps at optimizer step ``step`` (0-based): 1 for the first
    ``per_stage`` steps, 2 for the next, ... up to ``written``; None once every stage is done (the
    full layout) or with no curriculum (``per_stage`` 0)."""
    if per_stage <= 0 or step >= per_stage * written:
        return None
    return step // per_stage + 1


def step_targets(values: Tensor, latents: int) -> Tensor:
    """Targets (B, latents + 1) of the head at ``<bot>`` and latent slots 1..latents: slot ``i`` says
    step ``i + 1``'s value (``values[:, i + 1]``; ``<bot>`` is slot 0); -100 where a row has no such step."""
    b = values.shape[0]
    targets = torch.full((b, latents + 1), IGNORE, dtype=torch.long, device=values.device)
    known = min(latents + 1, values.shape[1] - 1)
    targets[:, :known] = values[:, 1 : known + 1]
    return targets


def step_logits(model: LatentReasoner, thoughts: Thoughts, student: AnswerOutput, latents: int) -> Tensor:
    """Logits (B, latents + 1, V) of the head at ``<bot>`` (one more one-token pass over the question's
    cache, rewriting ``<bot>``'s own keys) and at the latent slots (from the answer pass)."""
    b = thoughts.lengths.shape[0]
    bot = model.lm.embed(torch.full((b, 1), model.latent.bot, dtype=torch.long, device=thoughts.lengths.device))
    first = model.lm(None, thoughts.lengths[:, None], thoughts.cache, embeds=bot)  # (B, 1, V)
    return torch.cat([first, student.every_logits[:, :latents]], 1)


def staged_tail(programs_cot: list[list[int]], kept: int, answers: Tensor) -> Tensor:
    """Tail tokens (B, R) of a curriculum stage: ``<eot>``, the last ``kept`` written steps (4 tokens each:
    name, ``=``, value, ``;``), the prompt, the answer."""
    rows = [[EOT, *(cot[len(cot) - 4 * kept :] if kept else []), *ANSWER_PROMPT, int(a)] for cot, a in zip(programs_cot, answers)]
    return torch.tensor(rows)


__all__ = ["curriculum_stage", "staged_tail", "step_logits", "step_targets"]
