"""Meta-World MT10 (optional: ``pip install 'jacobix[robot]'``, i.e. ``metaworld packaging``).

The ten MT10 tasks with the goal observable, action (4,) in [-1, 1] (hand xyz motion, gripper).
Observation (30,): Meta-World's 39 values without the copy of the previous frame (values 18:36),
i.e. hand xyz, gripper opening, two objects' positions and quaternions (18), goal xyz (3), then
three relative vectors: object - hand, goal - hand, goal - object (9), so that a small token
policy need not learn to subtract quantised coordinates. The scripted experts never read the
previous frame; :func:`expert` gives them the 39-value layout with the current frame in its place.
A task's variant ``seed`` fixes its object and goal positions (Meta-World's random reset vector
drawn from a generator seeded with ``seed``). An episode ends at its first success
(``info["success"]``) or after ``max_steps`` steps (default 200; Meta-World's own limit is 500,
and its scripted experts finish MT10 tasks within about 100 steps). The experts are Meta-World's
scripted policies (``metaworld.policies``).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import numpy as np

MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")
OBS_DIM, ACT_DIM, MAX_STEPS = 30, 4, 200
INSTALL = "pip install 'jacobix[robot]'  (or: pip install metaworld packaging)"


def _metaworld() -> Any:
    """The metaworld module, or ImportError with the install command."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("metaworld")
    except ImportError as error:
        raise ImportError(f"the Meta-World suite needs metaworld: {INSTALL}") from error


def available() -> bool:
    """True when metaworld can be imported."""
    try:
        _metaworld()
    except ImportError:
        return False
    return True


class MetaWorld:
    """MT10 episodes, one at a time (follows :class:`~jacobix.robot.envs.Env`).

    It holds one MuJoCo environment (about 22 MB), rebuilt (about 0.3 s) when the task changes:
    to run many episodes in lockstep, interleave the tasks (t0, t1, ..., t9, t0, ...) and use a
    batch size that is a multiple of 10, so each environment keeps its task.
    """

    tasks, obs_dim, act_dim = MT10, OBS_DIM, ACT_DIM

    def __init__(self, *, max_steps: int = MAX_STEPS) -> None:
        if not 1 <= max_steps <= 500:
            raise ValueError(f"max_steps must be in [1, 500] (Meta-World's own limit), got {max_steps}")
        self.max_steps = max_steps
        self._classes = _metaworld().env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        self._task: str | None = None
        self._env: Any = None

    def reset(self, task: str, seed: int) -> np.ndarray:
        """Start ``task``'s variant ``seed``; returns the observation (30,) float32."""
        if task not in MT10:
            raise ValueError(f"unknown task {task!r}; MT10 has: {', '.join(MT10)}")
        if task != self._task:
            self._env = None  # free the previous task's simulator first
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._env = self._classes[f"{task}-goal-observable"]()
            self._task = task
        env = self._env
        env._freeze_rand_vec = False  # draw a fresh random reset vector ...
        env.seeded_rand_vec = True  # ... from env.np_random, seeded just below
        env.seed(int(seed))
        obs, _ = env.reset()
        return observation(obs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """Apply ``action`` (4,) in [-1, 1]; returns (observation, success, done)."""
        if self._env is None:
            raise RuntimeError("call reset(task, seed) before step")
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if action.shape != (ACT_DIM,):
            raise ValueError(f"action must have shape ({ACT_DIM},), got {action.shape}")
        obs, _, _, _, info = self._env.step(action)
        success = bool(info["success"])
        return observation(obs), success, success or self._env.curr_path_length >= self.max_steps


def observation(raw: np.ndarray) -> np.ndarray:
    """The (30,) observation of Meta-World's (39,) one (see the module docstring)."""
    hand, obj, goal = raw[0:3], raw[4:7], raw[36:39]
    return np.concatenate([raw[0:18], goal, obj - hand, goal - hand, goal - obj]).astype(np.float32)


_POLICIES: dict[str, Any] = {}


def expert(task: str, obs: np.ndarray) -> np.ndarray:
    """Meta-World's scripted policy for ``task`` at ``obs`` (30,); action (4,) clipped to [-1, 1]."""
    if task not in _POLICIES:
        if task not in MT10:
            raise ValueError(f"unknown task {task!r}; MT10 has: {', '.join(MT10)}")
        _POLICIES[task] = importlib.import_module("metaworld.policies").ENV_POLICY_MAP[task]()
    obs = np.asarray(obs, dtype=np.float64)
    if obs.shape != (OBS_DIM,):
        raise ValueError(f"obs must have shape ({OBS_DIM},), got {obs.shape}")
    action = _POLICIES[task].get_action(np.concatenate([obs[:18], obs[:18], obs[18:21]]))  # (39,) layout
    return np.clip(action, -1.0, 1.0).astype(np.float32)
