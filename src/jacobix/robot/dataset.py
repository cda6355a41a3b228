"""Expert demonstrations for behaviour cloning: DART-style noise on the executed actions, clean labels.

Every step ``t`` of an episode is one sample: the observation ``obs[t]``, its task and the clean
label chunk ``[expert(obs[t]), expert(obs[t+1]), ..., expert(obs[t+k-1])]``: the expert's
actions at the states the noisy rollout actually visited (the last action repeats past the
episode's end). The executed action is ``clip(expert(obs[t]) + noise * N(0, I))`` (DART,
Laskey et al. 2017), so the data covers the small drifts a cloned policy makes.

File format (``demonstrations.npz``, numpy arrays): ``obs`` (N, D) float32, ``task`` (N,) int64
(index into ``tasks``), ``actions`` (N, k, A) float32 in [-1, 1], ``episode`` (N,) int64,
``step`` (N,) int64, ``tasks`` (T,) str, ``seeds`` (E,) int64 and ``episode_success`` (E,) bool
per episode, ``noise`` () float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jacobix.robot.envs import Env, Expert

DEMONSTRATIONS = "demonstrations.npz"


@dataclass(frozen=True)
class Demonstrations:
    """States with clean expert action chunks (see the module docstring for the fields)."""

    obs: np.ndarray
    task: np.ndarray
    actions: np.ndarray
    episode: np.ndarray
    step: np.ndarray
    tasks: tuple[str, ...]
    seeds: np.ndarray
    episode_success: np.ndarray
    noise: float

    def __len__(self) -> int:
        return len(self.obs)

    def task_names(self) -> list[str]:
        """The task name of every sample."""
        return [self.tasks[i] for i in self.task]

    def save(self, path: str | Path) -> Path:
        """Write the arrays into ``path`` (a ``.npz`` file, or a folder that gets ``demonstrations.npz``)."""
        path = Path(path)
        path = path / DEMONSTRATIONS if path.suffix != ".npz" else path
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, obs=self.obs, task=self.task, actions=self.actions, episode=self.episode,
                            step=self.step, tasks=np.array(self.tasks), seeds=self.seeds,
                            episode_success=self.episode_success, noise=np.float64(self.noise))
        return path


def load_demonstrations(path: str | Path) -> Demonstrations:
    """Read a file :meth:`Demonstrations.save` wrote (``path``: the .npz or its folder)."""
    path = Path(path)
    path = path / DEMONSTRATIONS if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no demonstrations at {path}; collect them with: jacobix train policy --suite NAME --demos-only")
    with np.load(path, allow_pickle=False) as data:
        return Demonstrations(obs=data["obs"], task=data["task"], actions=data["actions"], episode=data["episode"],
                              step=data["step"], tasks=tuple(str(t) for t in data["tasks"]), seeds=data["seeds"],
                              episode_success=data["episode_success"], noise=float(data["noise"]))


def collect_demonstrations(make_env: Callable[[], Env], expert: Expert, tasks: Sequence[str], seeds: Sequence[int], *,
                           chunk: int, noise: float, rng: np.random.Generator, keep_failures: bool = False,
                           all_tasks: Sequence[str] | None = None) -> Demonstrations:
    """Run the expert with noisy executed actions on each (task, seed) episode and chunk its clean actions.

    Args:
        make_env: builds one environment (one is reused for all episodes).
        expert: (task, observation) -> action.
        tasks, seeds: the episodes.
        chunk: future actions per label.
        noise: standard deviation of the Gaussian noise added to executed actions (0: none).
        rng: the noise's generator.
        keep_failures: keep episodes that never succeeded (default: drop them).
        all_tasks: the task list that ``task`` indexes (default: the distinct ``tasks`` in order).
    """
    env = make_env()
    names = tuple(all_tasks or dict.fromkeys(tasks))
    parts, successes = [], []
    for index, (task, seed) in enumerate(zip(tasks, seeds)):
        obs_list, clean_list, success = _episode(env, expert, task, int(seed), noise, rng)
        successes.append(success)
        if not (success or keep_failures):
            continue
        obs, clean = np.stack(obs_list), np.stack(clean_list)  # (T, D), (T, A)
        ahead = np.minimum(np.arange(len(clean))[:, None] + np.arange(chunk), len(clean) - 1)  # (T, k)
        parts.append((obs, clean[ahead], np.full(len(obs), names.index(task)), np.full(len(obs), index), np.arange(len(obs))))
    if not parts:
        raise RuntimeError("the expert succeeded in no episode; nothing to learn from (lower --noise?)")
    obs, actions, task_ids, episode, step = (np.concatenate(column) for column in zip(*parts))
    return Demonstrations(obs=obs.astype(np.float32), task=task_ids.astype(np.int64), actions=actions.astype(np.float32),
                          episode=episode.astype(np.int64), step=step.astype(np.int64), tasks=names,
                          seeds=np.asarray(seeds, np.int64), episode_success=np.asarray(successes, bool), noise=noise)


def _episode(env: Env, expert: Expert, task: str, seed: int, noise: float,
             rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    obs = env.reset(task, seed)
    obs_list, clean_list = [], []
    for _ in range(env.max_steps):
        clean = np.clip(expert(task, obs), -1.0, 1.0).astype(np.float32)
        obs_list.append(obs)
        clean_list.append(clean)
        executed = np.clip(clean + noise * rng.standard_normal(clean.shape), -1.0, 1.0)
        obs, success, done = env.step(executed.astype(np.float32))
        if success:
            return obs_list, clean_list, True
        if done:
            break
    return obs_list, clean_list, False
