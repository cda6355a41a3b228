"""Robot policies that emit action tokens: codecs, the token format, environments and rollouts.

Meta-World (MT10) is optional (``pip install 'jacobix[robot]'``); everything else is numpy + torch.
"""

from jacobix.robot.codec import ActionCodec, ObservationCodec
from jacobix.robot.dataset import Demonstrations, collect_demonstrations, load_demonstrations
from jacobix.robot.envs import Env, Expert, Lockstep, run_expert
from jacobix.robot.policy import PolicyFormat, load_policy
from jacobix.robot.rollout import RolloutResult, chunk_jacobi, greedy_decider, run_episodes, wilson_interval
from jacobix.robot.suites import EVAL_SEED, SUITES, Suite, evaluation_episodes, get_suite

__all__ = [
    "EVAL_SEED", "SUITES", "ActionCodec", "Demonstrations", "Env", "Expert", "Lockstep", "ObservationCodec",
    "PolicyFormat", "RolloutResult", "Suite", "chunk_jacobi", "collect_demonstrations", "evaluation_episodes", "get_suite",
    "greedy_decider", "load_demonstrations", "load_policy", "run_episodes", "run_expert", "wilson_interval",
]
