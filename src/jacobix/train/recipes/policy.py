"""Train a robot policy (jacobix's Llama emitting action tokens) by behaviour cloning.

    jacobix train policy --suite pointmass --replace-bundled   # assets/pointmass-policy, minutes on CPU
    jacobix train policy --suite mt10 --replace-bundled        # assets/metaworld-mt10-policy (needs jacobix[robot])

Steps: collect expert demonstrations with DART noise on the executed actions
(:mod:`jacobix.robot.dataset`; saved as ``<out>/demonstrations.npz``, or read with ``--demos``),
fit the observation bins, train with cross-entropy on the action block + END (the prompt is
masked), save ``model.safetensors`` + ``config.json`` (format under "policy", the training
record under "train"), then roll the policy out with greedy AR decoding on unseen task
variants and record the success rate (and the quantised expert's, the ceiling) in config.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from jacobix.models.llama import Llama, LlamaConfig
from jacobix.core.checkpoints import save_checkpoint
from jacobix.robot.codec import ObservationCodec
from jacobix.robot.dataset import DEMONSTRATIONS, Demonstrations, collect_demonstrations, load_demonstrations
from jacobix.robot.envs import run_expert
from jacobix.robot.policy import PolicyFormat, load_policy
from jacobix.robot.rollout import greedy_decider, run_episodes, wilson_interval
from jacobix.robot.suites import EVAL_SEED, Suite, evaluation_episodes, get_suite
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.options import count, natural, nonnegative, positive, require_data
from jacobix.train.distributed import RunOptions
from jacobix.train.losses import IGNORE, next_token_loss, token_ce
from jacobix.train.loop import FitConfig, StepEnd, fit
from jacobix.train.recipe import Recipe
from jacobix.train.schedule import WarmupCosine

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PolicyTrainConfig:
    """Demonstrations, model size and optimisation of one policy."""

    suite: str = "pointmass"
    episodes_per_task: int = 1000
    noise: float = 0.1
    chunk: int = 4
    action_bins: int = 256
    obs_bins: int | None = None  # default: the suite's
    steps: int = 2500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    dim: int = 96
    num_layers: int = 3
    seed: int = 0
    eval_per_task: int = 40
    eval_batch: int = 60
    save_dtype: str = "float32"
    save_every: int = 500

    def __post_init__(self) -> None:
        get_suite(self.suite)
        for name in ("episodes_per_task", "chunk", "obs_bins", "steps", "batch_size", "dim", "num_layers", "eval_per_task",
                     "eval_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:  # obs_bins None: the suite's
                raise ValueError(f"PolicyTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "seed", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"PolicyTrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.noise < math.inf or not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"PolicyTrainConfig.noise and weight_decay must be finite and >= 0, got {self.noise}, {self.weight_decay}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"PolicyTrainConfig.lr must be finite and > 0, got {self.lr}")
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"PolicyTrainConfig.save_dtype must be float32, float16 or bfloat16, got {self.save_dtype}")


def collect(suite: Suite, config: PolicyTrainConfig) -> Demonstrations:
    """Demonstrations of ``episodes_per_task`` training variants (seeds 0, 1, ...) of every task, task by task."""
    tasks = [t for t in suite.tasks for _ in range(config.episodes_per_task)]
    seeds = [i for _ in suite.tasks for i in range(config.episodes_per_task)]
    return collect_demonstrations(suite.make_env, suite.expert, tasks, seeds, chunk=config.chunk, noise=config.noise,
                                  rng=np.random.default_rng(config.seed), all_tasks=suite.tasks)


def make_format(suite: Suite, demos: Demonstrations, config: PolicyTrainConfig) -> PolicyFormat:
    """The token format: the suite's tasks and observation bins fitted to the demonstrations' states."""
    codec = ObservationCodec.fit(demos.obs, bins=config.obs_bins or suite.obs_bins)
    return PolicyFormat(tasks=suite.tasks, obs_low=codec.low, obs_high=codec.high, obs_bins=codec.bins,
                        act_dim=demos.actions.shape[-1], chunk=demos.actions.shape[1], action_bins=config.action_bins)


def sequences(fmt: PolicyFormat, demos: Demonstrations) -> tuple[Tensor, Tensor]:
    """Model inputs (N, Lp + block - 1) and labels (same shape; the prompt masked with -100)."""
    prompts = fmt.prompts(demos.task_names(), demos.obs)  # (N, Lp)
    targets = fmt.target(demos.actions)  # (N, block)
    full = torch.cat((prompts, targets), dim=1)  # (N, Lp + block)
    labels = full[:, 1:].clone()  # (N, L - 1): position i predicts token i + 1
    labels[:, : fmt.prompt_length - 1] = IGNORE
    return full[:, :-1], labels


bc_loss = token_ce
"""Behaviour cloning's loss: mean cross-entropy of logits (B, L, V) on labels (B, L) over unmasked (!= -100) positions."""


def policy_batches(inputs: Tensor, labels: Tensor, batch_size: int):
    """``(step, generator) -> (inputs (B, L), labels (B, L))``: rows drawn uniformly with replacement."""
    def draw(step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        rows = torch.randint(len(inputs), (batch_size,), generator=generator)  # (B,)
        return inputs[rows], labels[rows]

    return draw


def evaluate(directory: Path, suite: Suite, config: PolicyTrainConfig) -> dict:
    """AR success of the saved policy and the quantised expert's on ``eval_per_task`` unseen variants per task."""
    model, fmt = load_policy(directory)
    tasks, seeds = evaluation_episodes(suite.tasks, config.eval_per_task)
    start = time.perf_counter()
    result = run_episodes(greedy_decider(model, fmt), suite.make_env, fmt, tasks, seeds,
                          batch_size=config.eval_batch)
    seconds = time.perf_counter() - start
    codec = fmt.action_codec
    expert = run_expert(suite.make_env, suite.expert, tasks, seeds, quantize=lambda a: codec.decode(codec.encode(a)).numpy(),
                        batch_size=config.eval_batch)
    wins = int(result.success.sum())
    low, high = wilson_interval(wins, result.episodes)
    elow, ehigh = wilson_interval(int(expert.sum()), len(expert))
    return {"episodes": result.episodes, "seeds": f"{EVAL_SEED}..{EVAL_SEED + config.eval_per_task - 1} per task",
            "decoding": "ar (greedy)", "success_rate": round(result.success_rate, 4), "ci_low": round(low, 4),
            "ci_high": round(high, 4), "per_task": {t: round(v, 3) for t, v in result.per_task().items()},
            "mean_steps": round(float(result.steps.mean()), 1), "rollout_seconds": round(seconds, 1),
            "expert_quantised_success_rate": round(float(expert.mean()), 4),
            "expert_ci": [round(elow, 4), round(ehigh, 4)]}


def train(out: Path, config: PolicyTrainConfig, *, demos_path: Path | None = None, demos_only: bool = False,
          options: RunOptions = RunOptions()) -> Path:
    """Collect (or read) demonstrations, train, save and evaluate a policy in ``out``; returns ``out``.

    ``options``: resume and early stop (:class:`RunOptions`; DDP only): every rank collects the same
    demonstrations; rank 0 saves and evaluates.
    """
    if options.fsdp:
        raise ValueError("--fsdp: policies are small; they train with DDP (drop --fsdp)")
    run = distributed.setup()
    torch.manual_seed(config.seed)
    suite = get_suite(config.suite)
    start = time.perf_counter()
    demos = load_demonstrations(demos_path) if demos_path else collect(suite, config)
    log.info("%d samples from %d/%d successful episodes (%.0fs)", len(demos), int(demos.episode_success.sum()),
             len(demos.episode_success), time.perf_counter() - start)
    out.mkdir(parents=True, exist_ok=True)
    if demos_path is None and run.is_main:
        demos.save(out / DEMONSTRATIONS)
    if demos_only:
        run.close()
        return out
    fmt = make_format(suite, demos, config)
    inputs, labels = sequences(fmt, demos)
    model = Llama(LlamaConfig(vocab_size=fmt.vocab_size, dim=config.dim, num_layers=config.num_layers, num_heads=4,
                              num_kv_heads=2, hidden_dim=3 * config.dim, max_seq_len=fmt.prompt_length + fmt.block))
    log.info("%s: vocab %d, %d parameters, %d sequences of %d tokens", suite.name, fmt.vocab_size,
             sum(p.numel() for p in model.parameters()), len(inputs), inputs.shape[1] + 1)
    record = {"policy": fmt.to_dict(), "train": asdict(config),
              "demonstrations": {"samples": len(demos), "episodes": len(demos.episode_success),
                                 "successful": int(demos.episode_success.sum()), "noise": demos.noise,
                                 "file": DEMONSTRATIONS if demos_path is None else str(demos_path)},
              "reproduce": f"jacobix train policy --suite {config.suite} {_flags(config)}".strip()}

    def save(step: int) -> None:
        save_checkpoint(model, out, architecture="llama", extra={**record, "steps_done": step},
                        dtype=getattr(torch, config.save_dtype))

    def partial_save(end: StepEnd) -> None:  # a usable checkpoint if the run stops
        done = end.step + 1
        if end.run.is_main and config.save_every and done % config.save_every == 0 and done < config.steps:
            save(done)

    fit_config = FitConfig(schedule=WarmupCosine(peak=config.lr, steps=config.steps, warmup=config.warmup),
                           weight_decay=config.weight_decay, seed=config.seed)
    result = fit(distributed.wrap(model, run), next_token_loss, policy_batches(inputs, labels, config.batch_size), fit_config,
                 run=run, options=options, out=out, on_step=partial_save)
    if run.is_main and result.finished:
        model.eval()
        record.update(final_loss=round(result.recent_loss(50), 4), train_seconds=round(time.perf_counter() - start, 1))
        save(config.steps)
        record["evaluation"] = evaluate(out, suite, config)
        log.info("evaluation: %s", json.dumps(record["evaluation"]))
        meta = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**meta, "evaluation": record["evaluation"]}, indent=2) + "\n")
    run.close()
    return out


SUITE_DEFAULTS = {  # what each bundled policy was trained with (flags override)
    "pointmass": {},
    "mt10": {"episodes_per_task": 150, "noise": 0.1, "steps": 6000, "dim": 128, "num_layers": 4,
             "eval_per_task": 30, "eval_batch": 50, "save_dtype": "float16"},
}


def suite_config(suite: str, **overrides) -> PolicyTrainConfig:
    """The suite's default settings with ``overrides`` (None values ignored)."""
    get_suite(suite)
    given = {k: v for k, v in overrides.items() if v is not None}
    return PolicyTrainConfig(suite=suite, **{**SUITE_DEFAULTS[suite], **given})


def _flags(config: PolicyTrainConfig) -> str:
    """Command-line flags for the settings that differ from the suite's defaults."""
    default = suite_config(config.suite)
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in asdict(config).items()
                    if k != "suite" and v != getattr(default, k) and v is not None).strip()


FIELDS = ("episodes_per_task", "noise", "chunk", "obs_bins", "steps", "batch_size", "lr", "dim", "num_layers", "seed",
          "eval_per_task", "eval_batch", "save_dtype", "save_every")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options: unset ones take the suite's defaults (:data:`SUITE_DEFAULTS`)."""
    parser.add_argument("--suite", choices=("pointmass", "mt10"), default="pointmass", help="the task suite (mt10 needs jacobix[robot])")
    add_output_arguments(parser, "<suite's policy>")
    parser.add_argument("--demos", type=Path, default=None, help="read demonstrations.npz instead of collecting")
    parser.add_argument("--demos-only", action="store_true", help="collect and save the demonstrations, then stop")
    for name, kind, text in (("episodes_per_task", count, "expert episodes per task"),
                             ("noise", nonnegative, "std of the DART noise on executed actions"),
                             ("chunk", count, "actions per block"), ("obs_bins", count, "bins per observation dim"),
                             ("steps", count, "optimiser steps"), ("batch_size", count, "sequences per step (all processes)"),
                             ("lr", positive, "peak learning rate"), ("dim", count, "model width"),
                             ("num_layers", count, "transformer layers"),
                             ("seed", natural, "seed of demonstrations, initialisation and batches"),
                             ("eval_per_task", count, "evaluation episodes per task"),
                             ("eval_batch", count, "episodes stepped in lockstep during evaluation"),
                             ("save_dtype", str, "float32, float16 or bfloat16"),
                             ("save_every", natural, "write the model every N steps (0: only at the end); "
                                                 "the resumable checkpoint.pt is written at --stop-after")):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text)
    distributed.add_distributed_arguments(parser, save_every=False)


def resolve(args: argparse.Namespace) -> None:
    """``out`` (the bundled folder is the suite's policy) and ``config`` (:func:`suite_config`)."""
    args.config = suite_config(args.suite, **{name: getattr(args, name) for name in FIELDS})
    args.options = RunOptions(resume=args.resume, stop_after=args.stop_after, fsdp=args.fsdp)
    args.options.last_step(args.config.steps)
    if args.demos is not None:
        require_data(args.demos, "--demos", "demonstrations.npz from an earlier run")
    args.out = output_folder(args, get_suite(args.suite).asset)


def run(args: argparse.Namespace) -> None:
    """``jacobix train policy --suite pointmass|mt10 [--out DIR | --replace-bundled] [--steps N] ...``."""
    torch.set_num_threads(1)
    train(args.out, args.config, demos_path=args.demos, demos_only=args.demos_only, options=args.options)


RECIPE = Recipe(name="policy", help="a robot policy by behaviour cloning (pointmass-policy, metaworld-mt10-policy)",
                add_arguments=add_arguments, resolve=resolve, run=run)
parse_args, main = RECIPE.parse_args, RECIPE.main

__all__ = ["IGNORE", "RECIPE", "PolicyTrainConfig", "bc_loss", "main", "parse_args", "policy_batches",
           "sequences", "suite_config", "train"]

if __name__ == "__main__":
    main()
