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
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from jacobix.models.llama import Llama, LlamaConfig
from jacobix.core.checkpoints import save_checkpoint
from jacobix.robot.codec import ObservationCodec
from jacobix.robot.dataset import DEMONSTRATIONS, Demonstrations, collect_demonstrations, load_demonstrations
from jacobix.robot.envs import run_expert
from jacobix.robot.policy import PolicyFormat, load_policy
from jacobix.robot.rollout import greedy_decider, run_episodes, wilson_interval
from jacobix.robot.suites import EVAL_SEED, Suite, evaluation_episodes, get_suite
from jacobix.train import add_output_arguments, output_folder

log = logging.getLogger(__name__)
IGNORE = -100


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
        for name in ("episodes_per_task", "chunk", "steps", "batch_size", "dim", "num_layers", "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"PolicyTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.noise < 0:
            raise ValueError(f"PolicyTrainConfig.noise must be >= 0, got {self.noise}")
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


def bc_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits`` (B, L, V) on ``labels`` (B, L) over unmasked (!= -100) positions."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def fit(model: Llama, inputs: Tensor, labels: Tensor, config: PolicyTrainConfig, out: Path,
        save: Callable[[int], None] | None = None) -> list[float]:
    """AdamW with warm-up and cosine decay; logs to ``out/metrics.jsonl``; returns the loss per step.

    ``save(step)`` is called every ``config.save_every`` steps (a usable checkpoint if the run stops).
    """
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    out.mkdir(parents=True, exist_ok=True)
    losses, start = [], time.perf_counter()
    with open(out / "metrics.jsonl", "w") as metrics:
        for step in range(config.steps):
            lr = config.lr * min(1.0, (step + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            rows = torch.randint(len(inputs), (config.batch_size,), generator=generator)  # (B,)
            loss = bc_loss(model(inputs[rows]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            metrics.write(json.dumps({"step": step, "loss": round(losses[-1], 5), "lr": lr}) + "\n")
            if step % 100 == 0 or step == config.steps - 1:
                metrics.flush()
                log.info("step %d loss %.4f lr %.2e %.0fs", step, losses[-1], lr, time.perf_counter() - start)
            if save is not None and config.save_every and (step + 1) % config.save_every == 0 and step + 1 < config.steps:
                save(step + 1)
    return losses


def evaluate(directory: Path, suite: Suite, config: PolicyTrainConfig) -> dict:
    """AR success of the saved policy and the quantised expert's on ``eval_per_task`` unseen variants per task."""
    model, fmt = load_policy(directory)
    tasks, seeds = evaluation_episodes(suite.tasks, config.eval_per_task)
    start = time.perf_counter()
    result = run_episodes(greedy_decider(model, fmt, method="ar"), suite.make_env, fmt, tasks, seeds,
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


def train(out: Path, config: PolicyTrainConfig, *, demos_path: Path | None = None, demos_only: bool = False) -> Path:
    """Collect (or read) demonstrations, train, save and evaluate a policy in ``out``; returns ``out``."""
    torch.manual_seed(config.seed)
    suite = get_suite(config.suite)
    start = time.perf_counter()
    demos = load_demonstrations(demos_path) if demos_path else collect(suite, config)
    log.info("%d samples from %d/%d successful episodes (%.0fs)", len(demos), int(demos.episode_success.sum()),
             len(demos.episode_success), time.perf_counter() - start)
    out.mkdir(parents=True, exist_ok=True)
    if demos_path is None:
        demos.save(out / DEMONSTRATIONS)
    if demos_only:
        return out
    fmt = make_format(suite, demos, config)
    inputs, labels = sequences(fmt, demos)
    model_config = LlamaConfig(vocab_size=fmt.vocab_size, dim=config.dim, num_layers=config.num_layers,
                               num_heads=4, num_kv_heads=2, hidden_dim=3 * config.dim,
                               max_seq_len=fmt.prompt_length + fmt.block)
    model = Llama(model_config)
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

    losses = fit(model, inputs, labels, config, out, save)
    model.eval()
    record.update(final_loss=round(float(np.mean(losses[-50:])), 4), train_seconds=round(time.perf_counter() - start, 1))
    save(config.steps)
    record["evaluation"] = evaluate(out, suite, config)
    log.info("evaluation: %s", json.dumps(record["evaluation"]))
    meta = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**meta, "evaluation": record["evaluation"]}, indent=2) + "\n")
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``out`` is resolved (see :func:`jacobix.train.output_folder`)."""
    parser = argparse.ArgumentParser(prog="jacobix train policy", description="train a robot policy by behaviour cloning")
    parser.add_argument("--suite", choices=("pointmass", "mt10"), default="pointmass")
    add_output_arguments(parser, "<suite's policy>")
    parser.add_argument("--demos", type=Path, default=None, help="read demonstrations.npz instead of collecting")
    parser.add_argument("--demos-only", action="store_true", help="collect and save the demonstrations, then stop")
    for name, kind, text in (("episodes_per_task", int, "expert episodes per task"),
                             ("noise", float, "std of the DART noise on executed actions"),
                             ("chunk", int, "actions per block"), ("obs_bins", int, "bins per observation dim"),
                             ("steps", int, "optimiser steps"), ("batch_size", int, "sequences per step"),
                             ("lr", float, "peak learning rate"), ("dim", int, "model width"),
                             ("num_layers", int, "transformer layers"), ("seed", int, "seed"),
                             ("eval_per_task", int, "evaluation episodes per task"),
                             ("eval_batch", int, "episodes stepped in lockstep during evaluation"),
                             ("save_dtype", str, "float32, float16 or bfloat16"),
                             ("save_every", int, "write the checkpoint every N steps (0: only at the end)")):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text)
    args = parser.parse_args(argv)
    args.out = output_folder(args, get_suite(args.suite).asset)
    return args


def main(argv: list[str] | None = None) -> None:
    """``jacobix train policy --suite pointmass|mt10 [--out DIR | --replace-bundled] [--steps N] ...``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    fields = ("episodes_per_task", "noise", "chunk", "obs_bins", "steps", "batch_size", "lr", "dim", "num_layers",
              "seed", "eval_per_task", "eval_batch", "save_dtype", "save_every")
    config = suite_config(args.suite, **{name: getattr(args, name) for name in fields})
    train(args.out, config, demos_path=args.demos, demos_only=args.demos_only)


if __name__ == "__main__":
    main()
