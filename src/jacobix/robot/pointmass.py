"""A dependency-free point-mass task suite in numpy, with a scripted expert.

A point with velocity moves in the square [-1, 1]^2. Action (4,) in [-1, 1]: a force on x and y
(dims 0, 1), the gripper (dim 2: > 0 closes it; closing within ``GRAB`` of the object grabs it,
opening drops it) and a press button (dim 3: > 0 presses). Observation (9,) float32:
position (2), velocity (2), object - position (2), goal - position (2), held (1): relative
vectors, so a small token policy need not learn to subtract quantised coordinates. Goals and
objects are drawn per (task, seed), so no constant action solves the suite.

Tasks:
    reach: bring the point within ``RADIUS`` of the goal.
    press: press (dim 3 > 0) while within ``RADIUS`` of the goal; pressing elsewhere does nothing.
    carry: grab the object, carry it, and let it go within ``RADIUS`` of the goal.
"""

from __future__ import annotations

import numpy as np

TASKS = ("reach", "press", "carry")
OBS_DIM, ACT_DIM, MAX_STEPS = 9, 4, 60
RADIUS, GRAB = 0.08, 0.06  # success radius, grab distance
DAMPING, GAIN = 0.7, 0.03  # v' = DAMPING * v + GAIN * force


class PointMass:
    """One point-mass episode at a time (see the module docstring); follows :class:`~jacobix.robot.envs.Env`."""

    tasks, obs_dim, act_dim, max_steps = TASKS, OBS_DIM, ACT_DIM, MAX_STEPS

    def __init__(self) -> None:
        self.task: str | None = None
        self.state = np.zeros(OBS_DIM, np.float64)

    def reset(self, task: str, seed: int) -> np.ndarray:
        """Start ``task``'s variant ``seed`` (positions drawn from a generator seeded by both)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; the pointmass suite has: {', '.join(TASKS)}")
        rng = np.random.default_rng([int(seed), TASKS.index(task)])
        while True:
            point, obj, goal = rng.uniform(-0.8, 0.8, size=(3, 2))
            far = np.linalg.norm(goal - point) > 0.4
            if task == "carry":
                far &= np.linalg.norm(obj - goal) > 0.4 and np.linalg.norm(obj - point) > 0.3
            if far:
                break
        self.task = task
        self.state = np.concatenate([point, np.zeros(2), obj, goal, [0.0]])
        return self._observation()

    def _observation(self) -> np.ndarray:
        s = self.state
        return np.concatenate([s[0:4], s[4:6] - s[0:2], s[6:8] - s[0:2], s[8:9]]).astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """Apply ``action`` (4,) in [-1, 1]; returns (observation, success, done)."""
        if self.task is None:
            raise RuntimeError("call reset(task, seed) before step")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACT_DIM,):
            raise ValueError(f"action must have shape ({ACT_DIM},), got {action.shape}")
        action = np.clip(action, -1.0, 1.0)
        s = self.state
        point, vel, obj, goal, held = s[0:2], s[2:4], s[4:6], s[6:8], s[8] > 0.5
        vel = DAMPING * vel + GAIN * action[:2]
        point = np.clip(point + vel, -1.0, 1.0)
        if action[2] > 0 and (held or np.linalg.norm(obj - point) < GRAB):
            held, obj = True, point.copy()
        else:
            held = False
        self.state = np.concatenate([point, vel, obj, goal, [float(held)]])
        near = np.linalg.norm(point - goal) < RADIUS
        success = {"reach": near, "press": near and action[3] > 0,
                   "carry": not held and np.linalg.norm(obj - goal) < RADIUS}[self.task]
        return self._observation(), bool(success), bool(success)


def _drive(obs: np.ndarray, target: np.ndarray, gain: float = 10.0, brake: float = 10.0) -> np.ndarray:
    """A force (2,) along ``target`` (relative to the point), damped by the velocity (a PD controller), clipped."""
    return np.clip(gain * target - brake * obs[2:4], -1.0, 1.0)


def expert(task: str, obs: np.ndarray) -> np.ndarray:
    """The scripted expert's action (4,) in [-1, 1] for ``task`` at observation ``obs`` (9,)."""
    obs = np.asarray(obs, dtype=np.float64)
    obj, goal, held = obs[4:6], obs[6:8], obs[8] > 0.5  # obj, goal: relative to the point
    grip, press = -1.0, -1.0
    if task == "reach":
        target = goal
    elif task == "press":
        target = goal
        press = 1.0 if np.linalg.norm(goal) < 0.6 * RADIUS else -1.0
    elif task == "carry":
        if held:
            target, grip = goal, (-1.0 if np.linalg.norm(goal) < 0.5 * RADIUS else 1.0)
        else:
            target = obj
            grip = 1.0 if np.linalg.norm(obj) < 0.8 * GRAB else -1.0
    else:
        raise ValueError(f"unknown task {task!r}; the pointmass suite has: {', '.join(TASKS)}")
    return np.concatenate([_drive(obs, target), [grip, press]]).astype(np.float32)
