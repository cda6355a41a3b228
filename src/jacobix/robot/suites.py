"""The task suites a policy can be trained and judged on, by name: ``pointmass`` and ``mt10``.

Seeds: training demonstrations use variants ``0, 1, ...``; evaluations use variants from
``EVAL_SEED`` on, never seen in training. :func:`evaluation_episodes` interleaves the tasks
(t0, t1, ..., t0, t1, ...) so that lockstep batches whose size is a multiple of the number of
tasks keep each environment on one task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jacobix.robot.metaworld as metaworld
import jacobix.robot.pointmass as pointmass
from jacobix.robot.envs import Env, Expert

EVAL_SEED = 10_000


@dataclass(frozen=True)
class Suite:
    """A named task suite.

    Attributes:
        name: "pointmass" or "mt10".
        tasks: its tasks.
        make_env: builds one environment.
        expert: the scripted expert, (task, observation) -> action.
        obs_bins: observation bins per dimension of its policies.
        asset: the bundled policy's folder name.
    """

    name: str
    tasks: tuple[str, ...]
    make_env: Callable[[], Env]
    expert: Expert
    obs_bins: int
    asset: str


SUITES = {
    "pointmass": Suite("pointmass", pointmass.TASKS, pointmass.PointMass, pointmass.expert, 128, "pointmass-policy"),
    "mt10": Suite("mt10", metaworld.MT10, metaworld.MetaWorld, metaworld.expert, 128, "metaworld-mt10-policy"),
}


def get_suite(name: str) -> Suite:
    """The suite called ``name``; ValueError listing the suites when unknown."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of: {', '.join(SUITES)}")
    return SUITES[name]


def evaluation_episodes(tasks: tuple[str, ...], per_task: int, first_seed: int = EVAL_SEED) -> tuple[list[str], list[int]]:
    """(tasks, seeds) of ``per_task`` episodes of every task, interleaved: seed ``first_seed + i`` for round i."""
    return [t for _ in range(per_task) for t in tasks], [first_seed + i for i in range(per_task) for _ in tasks]
