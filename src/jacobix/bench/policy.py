"""``jacobix bench policy``: action-token policies decoded by AR, exact Jacobi and early exit, judged by success.

Every row rolls out the same episodes (tasks x seeds) in lockstep, in float64 (in float32 two
nearly tied logits, 3e-6 apart in one of 300 MT10 episodes, can round one way in AR's sequential
passes and the other in Jacobi's batched ones). Columns: success rate with a Wilson 95% interval, forward passes per action chunk (the prompt's prefill, which also gives the
first action token, plus the decoding passes), wall time per chunk at batch 1 (chunks of the
teacher's AR episodes, every setting timed on the same prompts, interleaved, median, in the
checkpoint's own dtype), and ratios
to AR on the same model. Exact Jacobi must give AR's actions, hence the same successes episode by
episode: the bench checks it and reports it. Early exit is LOSSY and named so in every row.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from jacobix.models.protocol import CausalLM
from jacobix.robot.policy import PolicyFormat, load_policy
from jacobix.robot.rollout import (Decide, RolloutResult, chunk_jacobi, greedy_decider, run_episodes,
                                    wilson_interval)
from jacobix.robot.suites import evaluation_episodes, get_suite
from jacobix.core.acceptance import BinTolerance
from jacobix.tokens.decoding import LossyExit


@dataclass(frozen=True, kw_only=True)
class PolicyBenchConfig:
    """What to measure.

    Attributes:
        suite: "pointmass" (numpy, always available) or "mt10" (Meta-World, ``jacobix[robot]``).
        teacher: the policy trained by behaviour cloning (a bundled name or a folder).
        student: its CEED-distilled student, or None for teacher rows only.
        episodes_per_task: episodes per task (held-out variants, interleaved over the tasks).
        caps: LOSSY sweep caps of the student's early-exit rows.
        settle_bins: LOSSY relaxed-convergence rows: commit when no action token moved more than
            this many bins between sweeps.
        wall_chunks: prompts timed at batch 1 per setting.
        episode_batch: episodes stepped side by side (rounded up to a multiple of the suite's tasks,
            so that every environment keeps its task).
        rollout_dtype: dtype of the models in the rollouts and the exactness check.
    """

    suite: str = "pointmass"
    teacher: str = "pointmass-policy"
    student: str | None = "pointmass-policy-ceed"
    episodes_per_task: int = 100
    caps: tuple[int, ...] = (2, 3)
    settle_bins: tuple[int, ...] = (2,)
    wall_chunks: int = 40
    episode_batch: int = 100
    rollout_dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.episodes_per_task < 1 or self.wall_chunks < 1 or self.episode_batch < 1:
            raise ValueError(f"episodes_per_task, wall_chunks and episode_batch must be >= 1, got {self}")
        if self.rollout_dtype not in ("float32", "float64"):
            raise ValueError(f"rollout_dtype must be 'float32' or 'float64', got {self.rollout_dtype!r}")
        if any(c < 1 for c in self.caps) or any(m < 0 for m in self.settle_bins):
            raise ValueError(f"caps must be >= 1 sweep and settle_bins >= 0 bins, got {self.caps}, {self.settle_bins}")


@dataclass(frozen=True)
class Setting:
    """One row: a model decoded one way."""

    name: str
    model: str  # "teacher" or "student"
    method: str  # "ar" or "jacobi"
    cap: int | None = None
    settle: int | None = None

    @property
    def lossy(self) -> bool:
        return self.cap is not None or self.settle is not None

    def decider(self, model: CausalLM, fmt: PolicyFormat) -> Decide:
        if self.method == "ar":
            return greedy_decider(model, fmt)
        if not self.lossy:
            return greedy_decider(model, fmt, chunk_jacobi(fmt))
        first, count = fmt.action_tokens
        settled = None if self.settle is None else BinTolerance(first=first, count=count, max_moved=self.settle)
        return greedy_decider(model, fmt, replace(chunk_jacobi(fmt), lossy=LossyExit(sweep_cap=self.cap, settled=settled)))


def settings(config: PolicyBenchConfig) -> list[Setting]:
    """The rows: AR and exact Jacobi on each model, then the student's LOSSY early exits."""
    rows = [Setting("AR", "teacher", "ar"), Setting("Jacobi (exact)", "teacher", "jacobi")]
    if config.student is None:
        return rows
    rows += [Setting("AR", "student", "ar"), Setting("Jacobi (exact)", "student", "jacobi")]
    rows += [Setting(f"early exit, cap {c} (LOSSY)", "student", "jacobi", cap=c) for c in config.caps]
    rows += [Setting(f"early exit, moved <= {m} bins (LOSSY)", "student", "jacobi", settle=m) for m in config.settle_bins]
    return rows


@dataclass
class Row:
    """One setting's measurements (``to_json`` is one object of ``--json``)."""

    setting: Setting
    result: RolloutResult
    wall_ms_per_chunk: float = 0.0
    wall_vs_ar: float = 0.0
    passes_vs_ar: float = 0.0
    same_as_ar: bool | None = None  # exact rows: the same tokens and successes as AR, episode by episode

    @property
    def passes_per_chunk(self) -> float:
        """Forward passes per chunk: the prefill plus the decoding passes."""
        return 1.0 + self.result.passes_per_chunk

    def to_json(self) -> dict:
        successes, n = int(self.result.success.sum()), self.result.episodes
        low, high = wilson_interval(successes, n)
        return {"setting": self.setting.name, "model": self.setting.model, "lossy": self.setting.lossy,
                "success_rate": successes / n, "ci_low": low, "ci_high": high, "episodes": n,
                "passes_per_chunk": self.passes_per_chunk, "decode_passes_per_chunk": self.result.passes_per_chunk,
                "passes_vs_ar": self.passes_vs_ar, "wall_ms_per_chunk": self.wall_ms_per_chunk,
                "wall_vs_ar": self.wall_vs_ar, "same_as_ar": self.same_as_ar,
                "invalid_action_slots": int(self.result.invalid_slots.sum()),
                "per_task": self.result.per_task(), "sweep_cap": self.setting.cap, "settle_bins": self.setting.settle}


def bench_policy(config: PolicyBenchConfig, *, log: Callable[[str], None] = lambda _: None) -> list[Row]:
    """Roll out every setting on the same episodes and time it at batch 1 (see the module docstring)."""
    suite = get_suite(config.suite)
    models = {"teacher": load_policy(config.teacher)}
    if config.student is not None:
        models["student"] = load_policy(config.student)
        if models["student"][1] != models["teacher"][1]:
            raise ValueError(f"student {config.student!r} and teacher {config.teacher!r} have different token formats")
    fmt = models["teacher"][1]
    episode_tasks, seeds = evaluation_episodes(suite.tasks, config.episodes_per_task)  # never seen in training
    rows, prompts = [], []
    dtype = getattr(torch, config.rollout_dtype)
    rollout_models = {name: copy.deepcopy(model).to(dtype) for name, (model, _) in models.items()}
    batch = -(-config.episode_batch // len(suite.tasks)) * len(suite.tasks)
    for setting in settings(config):
        decide = setting.decider(rollout_models[setting.model], fmt)
        if not rows:  # the teacher's AR row: keep its prompts for the wall-clock rows
            decide = _recording(decide, prompts)
        started = time.perf_counter()
        result = run_episodes(decide, suite.make_env, fmt, episode_tasks, seeds, batch_size=batch)
        log(f"{setting.model} {setting.name}: success {result.success_rate:.3f} in {time.perf_counter() - started:.0f}s")
        rows.append(Row(setting, result))
    _compare(rows)
    _time(rows, models, fmt, _sample(prompts, config.wall_chunks))
    return rows


def _recording(decide: Decide, prompts: list[Tensor]) -> Decide:
    def recorded(batch: Tensor) -> tuple[Tensor, Tensor]:
        prompts.extend(batch)
        return decide(batch)

    return recorded


def _sample(prompts: list[Tensor], count: int) -> list[Tensor]:
    picks = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0))[:count]
    return [prompts[i] for i in picks.tolist()]


def _compare(rows: list[Row]) -> None:
    """Passes vs AR on the teacher, and the exactness check of every exact row against AR on its model."""
    base = rows[0].passes_per_chunk
    ar = {row.setting.model: row for row in rows if row.setting.method == "ar"}
    for row in rows:
        row.passes_vs_ar = base / row.passes_per_chunk
        if row.setting.method == "jacobi" and not row.setting.lossy:
            reference = ar[row.setting.model].result
            row.same_as_ar = bool(np.array_equal(row.result.chunk_tokens, reference.chunk_tokens)
                                  and np.array_equal(row.result.success, reference.success))


def _time(rows: list[Row], models: dict, fmt: PolicyFormat, prompts: list[Tensor], repeats: int = 3) -> None:
    """Wall time per chunk at batch 1: each prompt decoded by every setting in turn, medians over prompts."""
    deciders = [row.setting.decider(models[row.setting.model][0], fmt) for row in rows]
    for decide in deciders:  # warm-up
        decide(prompts[0][None])
    times: list[list[float]] = [[] for _ in rows]
    for _ in range(repeats):
        for prompt in prompts:
            for i, decide in enumerate(deciders):
                started = time.perf_counter()
                decide(prompt[None])
                times[i].append(time.perf_counter() - started)
    ar = {row.setting.model: i for i, row in enumerate(rows) if row.setting.method == "ar"}
    medians = [statistics.median(t) for t in times]
    for row, median in zip(rows, medians):
        row.wall_ms_per_chunk = 1000 * median
        row.wall_vs_ar = medians[ar["teacher"]] / median


def table(rows: list[Row], config: PolicyBenchConfig) -> str:
    """The rows as a text table, with the exactness check."""
    lines = [f"jacobix bench policy: suite {config.suite}, {rows[0].result.episodes} episodes per row "
             f"(same tasks and seeds, rollouts in {config.rollout_dtype}), "
             f"wall at batch 1 over {config.wall_chunks} chunks in the checkpoints' dtype",
             f"{'model':8} {'setting':38} {'success':>8} {'95% CI':>15} {'passes/chunk':>12} {'vs AR':>6} "
             f"{'ms/chunk':>9} {'wall vs AR':>10} {'= AR':>5}"]
    for row in rows:
        r = row.to_json()
        same = {None: "", True: "yes", False: "NO"}[row.same_as_ar]
        lines.append(f"{r['model']:8} {r['setting']:38} {r['success_rate']:8.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
                     f"{r['passes_per_chunk']:12.2f} {r['passes_vs_ar']:6.2f} {r['wall_ms_per_chunk']:9.2f} "
                     f"{r['wall_vs_ar']:10.2f} {same:>5}")
    lines.append("passes/chunk counts the prefill (which gives the first action token) and every decoding pass; "
                 "vs AR is against AR on the teacher. LOSSY rows do not reproduce AR's actions.")
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], config: PolicyBenchConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": asdict(config), "rows": [row.to_json() for row in rows]}, indent=2) + "\n")


__all__ = ["PolicyBenchConfig", "Row", "Setting", "bench_policy", "settings", "table", "write_json"]
