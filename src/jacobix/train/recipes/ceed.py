"""``jacobix train ceed``: distil a behaviour-cloned action-token policy with CEED-VLA (see :mod:`jacobix.train.ceed`).

Reproduce the bundled students::

    jacobix train ceed --teacher pointmass-policy --replace-bundled
    jacobix train ceed --teacher metaworld-mt10-policy --replace-bundled    # needs jacobix[robot]

The student starts as a copy of the teacher. Trajectories are the teacher's greedy Jacobi
iterations over the action block on demonstration states (``--data``, or demonstrations
collected afresh with the suite's expert and DART noise); the loss is CLLM's consistency plus
``--ar-weight`` times the AR loss on mixed labels (``--delta-max``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from jacobix import assets
from jacobix.models.llama import save_llama
from jacobix.robot.dataset import Demonstrations, collect_demonstrations, load_demonstrations
from jacobix.robot.policy import PolicyFormat, load_policy
from jacobix.robot.rollout import chunk_jacobi, greedy_decider, run_episodes, wilson_interval
from jacobix.robot.suites import SUITES, Suite, evaluation_episodes
from jacobix.tokens.generate import generate
from jacobix import assets
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.options import check_lineage, count, nonnegative, require_data
from jacobix.train.ceed import CEEDConfig, collect_policy, with_mixed_labels
from jacobix.train.cllm import CLLM_HELP, CLLMConfig, causal_forward, train_cllm
from jacobix.train.recipe import Recipe
from jacobix.train.trajectories import load_trajectories, save_trajectories

log = logging.getLogger(__name__)
TRAINING = ("steps", "batch_size", "lr", "warmup", "global_weight", "local_weight", "ar_weight", "fixed_point_weight",
            "label_smoothing", "weight_decay", "seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options (the training ones are :class:`CLLMConfig` fields)."""
    parser.add_argument("--teacher", default="pointmass-policy", help=f"a bundled policy ({', '.join(assets.names('policy'))}) or a policy checkpoint folder")
    parser.add_argument("--data", type=Path, help="demonstrations.npz (from jacobix train policy); default: collect afresh")
    parser.add_argument("--episodes-per-task", type=count, default=300, help="expert episodes per task when collecting")
    parser.add_argument("--noise", type=nonnegative, default=0.1, help="DART noise on the executed actions when collecting")
    parser.add_argument("--max-states", type=count, default=20000, help="demonstration states used (a random subset)")
    parser.add_argument("--delta-max", type=nonnegative, default=CEEDConfig().delta_max,
                        help="mixed labels: take the teacher's chunk when within this many action units of the truth")
    parser.add_argument("--collect-batch", type=count, default=CEEDConfig().collect_batch,
                        help="states decoded together when collecting trajectories")
    parser.add_argument("--trajectories", type=Path, help="trajectories file: read it if it exists, else write it there")
    parser.add_argument("--eval-per-task", type=count, default=30, help="held-out episodes per task for the report")
    defaults = asdict(CEEDConfig().training)
    for name in TRAINING:
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(defaults[name]), default=defaults[name],
                            help=CLLM_HELP[name])
    add_output_arguments(parser, "pointmass-policy-ceed", origin="--teacher")
    distributed.add_distributed_arguments(parser)


def resolve(args: argparse.Namespace) -> None:
    """Check the options, the teacher (read here) and ``--data``; ``config`` (:class:`CEEDConfig`) and ``out``,
    which follows the teacher's suite (``--replace-bundled`` keeps the bundled student's teacher)."""
    for name in ("episodes_per_task", "max_states", "collect_batch", "eval_per_task"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.config = CEEDConfig(delta_max=args.delta_max, collect_batch=args.collect_batch,
                             training=CLLMConfig(**{k: getattr(args, k) for k in TRAINING}, context_limit=None))
    if args.data is not None:
        require_data(args.data, "--data", "demonstrations.npz from jacobix train policy")
    args.options = distributed.RunOptions.from_args(args)
    args.options.last_step(args.steps)
    try:
        _, fmt = load_policy(args.teacher)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--teacher {args.teacher}: {error}") from None
    bundled = f"{suite_of(fmt).asset}-ceed"
    check_lineage(args, bundled, "--teacher", args.teacher, assets.get(bundled).teacher)
    args.out = output_folder(args, bundled)


def suite_of(fmt: PolicyFormat) -> Suite:
    """The suite whose tasks the policy's format holds."""
    for suite in SUITES.values():
        if suite.tasks == fmt.tasks:
            return suite
    raise ValueError(f"no suite has the tasks {fmt.tasks}; known suites: {', '.join(SUITES)}")


def actions_of(fmt: PolicyFormat):
    """``tokens (N, block) -> (N, chunk, act_dim)`` actions, NaN where a slot holds no action token."""
    def decode(tokens: Tensor) -> Tensor:
        return torch.where(fmt.non_actions(tokens), math.nan, fmt.actions(tokens).double())  # (N, k, A)

    return decode


def dataset(args: argparse.Namespace, suite: Suite, fmt: PolicyFormat) -> tuple[Tensor, Tensor]:
    """(N, Lp) prompts and (N, block) ground-truth chunks of the demonstration states."""
    if args.data is not None:
        demos = load_demonstrations(args.data)
    else:
        tasks = [t for t in suite.tasks for _ in range(args.episodes_per_task)]
        seeds = [i for _ in suite.tasks for i in range(args.episodes_per_task)]
        demos: Demonstrations = collect_demonstrations(suite.make_env, suite.expert, tasks, seeds, chunk=fmt.chunk,
                                                       noise=args.noise, rng=np.random.default_rng(0),
                                                       all_tasks=suite.tasks)
    keep = np.random.default_rng(1).permutation(len(demos))[: args.max_states]
    prompts = fmt.prompts([demos.tasks[i] for i in demos.task[keep]], demos.obs[keep])  # (N, Lp)
    targets = fmt.target(torch.as_tensor(demos.actions[keep]))  # (N, block)
    return prompts, targets


@torch.no_grad()
def measure(model, fmt: PolicyFormat, prompts: Tensor, suite: Suite, per_task: int) -> dict:
    """Exact-Jacobi passes per chunk on dataset states and the success of AR on held-out episodes."""
    result = generate(model, prompts, chunk_jacobi(fmt), max_new_tokens=fmt.block)
    passes = float(result.stats.active_per_pass.sum(0).double().mean()) + 1  # + the prefill
    tasks, seeds = evaluation_episodes(suite.tasks, per_task)
    rollout = run_episodes(greedy_decider(model, fmt), suite.make_env, fmt, tasks, seeds,
                           batch_size=10 * len(suite.tasks))  # a multiple of the tasks: each environment keeps one
    low, high = wilson_interval(int(rollout.success.sum()), rollout.episodes)
    return {"jacobi_passes_per_chunk": round(passes, 3), "ar_passes_per_chunk": fmt.block,
            "success_rate": round(rollout.success_rate, 4), "ci": [round(low, 4), round(high, 4)],
            "episodes": rollout.episodes}


def run(args: argparse.Namespace) -> None:
    """Collect (or read) the teacher's trajectories, distill, measure and save; runs unchanged under ``torchrun``."""
    options = args.options
    teacher, fmt = load_policy(args.teacher)
    suite = suite_of(fmt)
    run = distributed.setup()
    prompts, targets = dataset(args, suite, fmt)
    path = args.trajectories or args.out / "trajectories.safetensors"
    if not path.is_file() and run.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_trajectories(collect_policy(teacher, prompts, targets, act_dim=fmt.act_dim, config=args.config,
                                         name=str(args.teacher)), path)
    run.barrier()
    data, near = with_mixed_labels(load_trajectories(path), actions_of(fmt), args.config.delta_max)
    log.info("%d states; the teacher's chunk is the label for %.1f%% (delta_max %.3f)", len(near),
             100 * float(near.float().mean()), args.config.delta_max)
    probe = prompts[-256:]  # dataset states on which passes per chunk are measured
    before = measure(teacher, fmt, probe, suite, args.eval_per_task) if run.is_main else {}
    student = copy.deepcopy(teacher)
    wrapped = distributed.wrap(student, run, fsdp=args.fsdp)
    train_log = train_cllm(wrapped, causal_forward(wrapped), data, args.config.training, run=run, options=options,
                           out=args.out)
    weights = distributed.full_state_dict(wrapped)
    if run.is_main and options.stop_after is None:
        student.load_state_dict(weights)
        report = {"teacher": str(args.teacher), "config": asdict(args.config), "teacher_label_share": float(near.float().mean()),
                  "before": before, "after": measure(student.eval(), fmt, probe, suite, args.eval_per_task),
                  "train_seconds": round(train_log.seconds, 1), "final_losses": train_log.steps[-1],
                  "reproduce": "jacobix train ceed " + " ".join(args.argv)}
        log.info("before %s after %s", before, report["after"])
        save_llama(student.eval(), args.out, extra={"policy": fmt.to_dict(), "ceed": report})
        log.info("wrote %s", args.out)
    run.close()


RECIPE = Recipe(name="ceed", help="CEED-VLA consistency distillation of a policy (pointmass-policy-ceed)",
                add_arguments=add_arguments, resolve=resolve, run=run)
parse_args, main = RECIPE.parse_args, RECIPE.main

__all__ = ["RECIPE", "actions_of", "dataset", "main", "measure", "parse_args", "run", "suite_of"]


if __name__ == "__main__":  # python -m jacobix.train.recipes.ceed (what torchrun starts)
    main()
