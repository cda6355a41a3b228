"""CEED-VLA: consistency distillation of an action-token policy, with mixed labels.

The action chunk (``chunk x act_dim`` action tokens and an end token) is the Jacobi block. The
teacher policy's greedy Jacobi trajectories over that block, on dataset states, are collected on
the engine (:func:`jacobix.train.trajectories.collect` in block mode), and the student (a copy of
the teacher) is trained with CLLM's consistency losses plus ``w`` times an AR loss on **mixed
labels**: per sample, the teacher's own fixed-point chunk when its decoded actions lie within
``delta_max`` of the ground-truth actions (max over the chunk), else the ground truth.

Drafts of a fresh block come from the action one step before (``init="row-above"`` with the
action dimensions as the row), in training and decoding alike; CEED-VLA's code drafts from prompt
tokens. Decoding is :func:`jacobix.generate` with ``block=True``: exact by default, or LOSSY with
early exit (``lossy_sweep_cap``, ``lossy_settled=BinTolerance(...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from jacobix.models.protocol import CausalLM
from jacobix.train.cllm import CLLMConfig
from jacobix.train.trajectories import CollectConfig, Trajectories, collect

ActionsOf = Callable[[Tensor], Tensor]
"""``actions_of(tokens (N, block)) -> (N, chunk, act_dim)`` actions, NaN where a token is not an action."""


def _default_training() -> CLLMConfig:
    return CLLMConfig(steps=1500, batch_size=32, lr=3e-4, ar_weight=10.0, fixed_point_weight=0.0,
                      global_weight=1.0, local_weight=1.0, context_limit=None)


@dataclass(frozen=True, kw_only=True)
class CEEDConfig:
    """CEED-VLA's options.

    Attributes:
        delta_max: the largest distance (action units, max over the chunk) at which the teacher's
            fixed-point chunk replaces the ground truth as the AR label.
        training: steps, batch, learning rate and loss weights; ``ar_weight`` is CEED's ``w``.
            The fixed-point loss is off by default: the mixed labels already hold the fixed points.
        collect_batch: states decoded together when collecting trajectories.
        seed: seed of the draft init when collecting.
    """

    delta_max: float = 0.1
    training: CLLMConfig = field(default_factory=_default_training)
    collect_batch: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.delta_max >= 0:
            raise ValueError(f"delta_max must be >= 0 action units (0 keeps the ground truth unless equal), got {self.delta_max}")
        if self.collect_batch < 1:
            raise ValueError(f"collect_batch must be >= 1, got {self.collect_batch}")


def mixed_labels(teacher: Tensor, truth: Tensor, teacher_actions: Tensor, truth_actions: Tensor,
                 delta_max: float) -> tuple[Tensor, Tensor]:
    """CEED-VLA's AR labels: per sample the teacher's tokens if its actions are near the truth, else the truth.

    Args:
        teacher: (N, n) the teacher's fixed-point tokens.
        truth: (N, n) the ground-truth tokens.
        teacher_actions: (N, ...) the teacher's decoded actions; NaN where it emitted no action.
        truth_actions: (N, ...) the ground-truth actions.
        delta_max: the largest max-abs distance at which the teacher's chunk is taken.
    Returns:
        (N, n) labels and (N,) True where the teacher's chunk was taken.
    """
    if teacher.shape != truth.shape or teacher_actions.shape != truth_actions.shape:
        raise ValueError(f"mixed_labels: teacher {tuple(teacher.shape)} / {tuple(teacher_actions.shape)} and truth "
                         f"{tuple(truth.shape)} / {tuple(truth_actions.shape)} must have the same shapes")
    distance = (teacher_actions - truth_actions).abs().flatten(1).amax(dim=1)  # (N,), NaN if any action is missing
    near = distance <= delta_max  # NaN compares False
    return torch.where(near[:, None], teacher, truth), near


def collect_policy(teacher: CausalLM, prompts: Tensor, targets: Tensor, *, act_dim: int,
                   config: CEEDConfig = CEEDConfig(), name: str = "") -> Trajectories:
    """The teacher's greedy Jacobi trajectories over the action block, one block per dataset state.

    Args:
        teacher: the policy.
        prompts: (N, Lp) prompt tokens (task and observation).
        targets: (N, n + 1) ground-truth action chunks with their end token; the first token comes
            from the prefill, the other ``n`` form the block.
        act_dim: action dimensions (drafts copy the action one step before).
        config: batching and seed.
        name: the teacher's name, stored with the trajectories.
    Returns:
        trajectories whose ``truth`` is still the ground truth (see :func:`with_mixed_labels`).
    """
    if prompts.dim() != 2 or targets.dim() != 2 or len(prompts) != len(targets):
        raise ValueError(f"collect_policy: prompts {tuple(prompts.shape)} and targets {tuple(targets.shape)} must be "
                         "(N, Lp) and (N, block) with the same N")
    block = targets.shape[1]
    collect_config = CollectConfig(block_size=block - 1, max_new_tokens=block, batch_size=config.collect_batch,
                                   seed=config.seed, repetition=None, init="row-above", row_length=act_dim)
    return collect(teacher, list(prompts), list(targets), collect_config, name=name)


def with_mixed_labels(data: Trajectories, actions_of: ActionsOf, delta_max: float) -> tuple[Trajectories, Tensor]:
    """``data`` with each prompt's ``truth`` replaced by its mixed label, and (P,) True where the teacher's was taken.

    Args:
        data: trajectories from :func:`collect_policy` (one whole chunk per prompt).
        actions_of: decodes (N, block) tokens to actions, NaN where a token is not an action.
        delta_max: see :func:`mixed_labels`.
    """
    n = data.truth.shape[1]
    if data.generated.shape[1] < n or bool((data.generated_length < n).any()):
        raise ValueError("with_mixed_labels: every prompt needs the teacher's whole chunk; collect with collect_policy")
    teacher = data.generated[:, :n]  # (P, n)
    labels, near = mixed_labels(teacher, data.truth, actions_of(teacher), actions_of(data.truth), delta_max)
    return replace(data, truth=labels), near


__all__ = ["ActionsOf", "CEEDConfig", "collect_policy", "mixed_labels", "with_mixed_labels"]
