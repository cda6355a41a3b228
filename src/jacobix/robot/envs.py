"""The environment protocol of jacobix's robot suites and a helper that steps many episodes in lockstep.

An episode ends at its first success or after ``max_steps`` steps (both suites): success is
"the task was achieved at some step", as Meta-World's evaluations count it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Env(Protocol):
    """One episode at a time of a multi-task suite; actions are float arrays (act_dim,) in [-1, 1]."""

    tasks: tuple[str, ...]
    obs_dim: int
    act_dim: int
    max_steps: int

    def reset(self, task: str, seed: int) -> np.ndarray:
        """Start an episode of ``task``'s variant ``seed``; returns the observation (obs_dim,) float32."""

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """Apply ``action``; returns (observation, success, done). ``done`` at success or the step limit."""


Expert = Callable[[str, np.ndarray], np.ndarray]  # (task, observation) -> action (act_dim,) in [-1, 1]


@dataclass
class Lockstep:
    """Episodes run side by side, one environment each; rows that are done stop being stepped.

    Attributes:
        envs: one environment per episode.
        tasks: the episodes' tasks; ``seeds`` their variants.
        obs: (N, obs_dim) latest observation of every episode.
        success, done: (N,) flags; ``steps`` (N,) steps taken.
    """

    envs: list[Env]
    tasks: list[str]
    seeds: list[int]
    obs: np.ndarray
    success: np.ndarray
    done: np.ndarray
    steps: np.ndarray

    @classmethod
    def start(cls, make_env: Callable[[], Env], tasks: Sequence[str], seeds: Sequence[int],
              envs: list[Env] | None = None) -> "Lockstep":
        """Reset one environment per (task, seed) pair (reusing ``envs`` when given, creating the rest)."""
        if len(tasks) != len(seeds):
            raise ValueError(f"tasks and seeds must have the same length, got {len(tasks)} and {len(seeds)}")
        envs = list(envs or [])[: len(tasks)]
        envs += [make_env() for _ in range(len(tasks) - len(envs))]
        obs = np.stack([env.reset(task, int(seed)) for env, task, seed in zip(envs, tasks, seeds)])  # (N, D)
        n = len(tasks)
        return cls(envs, list(tasks), [int(s) for s in seeds], obs.astype(np.float32),
                   np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, np.int64))

    @property
    def active(self) -> np.ndarray:
        """(N,) indices of episodes still running."""
        return np.flatnonzero(~self.done)

    def step(self, rows: np.ndarray, actions: np.ndarray) -> None:
        """Step episodes ``rows`` (still running) with ``actions`` (len(rows), act_dim)."""
        for row, action in zip(rows, actions):
            if self.done[row]:
                continue
            obs, success, done = self.envs[row].step(np.asarray(action, dtype=np.float32))
            self.obs[row] = obs
            self.steps[row] += 1
            self.success[row] |= bool(success)
            self.done[row] = bool(done) or bool(success) or self.steps[row] >= self.envs[row].max_steps


def run_expert(make_env: Callable[[], Env], expert: Expert, tasks: Sequence[str], seeds: Sequence[int], *,
               quantize: Callable[[np.ndarray], np.ndarray] | None = None, batch_size: int | None = None) -> np.ndarray:
    """Success (N,) of the scripted expert on each (task, seed) episode, its actions optionally quantised.

    Args:
        make_env: builds one environment.
        expert: (task, observation) -> action.
        tasks, seeds: the episodes.
        quantize: applied to every clipped action before it is executed (e.g. an ActionCodec round trip).
        batch_size: episodes run side by side (default: all); their environments are reused.
    """
    size, success, envs = batch_size or max(len(tasks), 1), [], []
    for first in range(0, len(tasks), size):
        run = Lockstep.start(make_env, tasks[first : first + size], seeds[first : first + size], envs)
        envs = run.envs if len(run.envs) > len(envs) else envs
        while len(rows := run.active):
            actions = np.stack([np.clip(expert(run.tasks[r], run.obs[r]), -1.0, 1.0) for r in rows])  # (R, A)
            run.step(rows, actions if quantize is None else quantize(actions))
        success.append(run.success.copy())
    return np.concatenate(success) if success else np.zeros(0, bool)
