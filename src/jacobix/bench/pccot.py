"""``jacobix bench pccot``: the PCCoT arms side by side on the fixed held-out programs.

Reads checkpoints written by ``jacobix train pccot`` (one folder per arm and seed; the bundled
``pccot`` and ``pccot-seq`` by default) and reports, per arm: accuracy by generated answers
per difficulty with the spread over seeds, inference latency per question at batch 1 and 64,
forward passes per question, and the training time per 1000 steps the trainer measured.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jacobix import assets
from jacobix.latent.arith import encode, heldout_set
from jacobix.latent.evaluate import arm_answers, encode_questions
from jacobix.latent.model import LatentReasoner, load_reasoner
from jacobix.latent.thoughts import read_answer, think


@dataclass(frozen=True, kw_only=True)
class PccotBenchConfig:
    """What to measure.

    Attributes:
        runs: checkpoint folders (each from ``jacobix train pccot``); empty: the bundled ones.
        per_difficulty: held-out programs per difficulty (the fixed set holds 2000).
        latency_questions: questions timed one by one at batch 1 (and batches of 64 timed).
        steps: difficulties to score; empty: the trained range of each checkpoint.
    """

    runs: tuple[Path, ...] = ()
    per_difficulty: int = 2000
    latency_questions: int = 40
    steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.per_difficulty <= 2000:
            raise ValueError(f"per_difficulty must be in 1..2000 (the held-out set), got {self.per_difficulty}")
        if self.latency_questions < 1:
            raise ValueError(f"latency_questions must be >= 1, got {self.latency_questions}")


@dataclass
class ArmResult:
    """One arm (all its seeds)."""

    arm: str
    T: int | None
    c: int | None
    seeds: int
    accuracy_by_steps: dict[int, list[float]] = field(default_factory=dict)
    latency_b1_ms: float = 0.0
    latency_b64_ms: float = 0.0
    forward_passes: float = 0.0
    train_s_per_1k_steps: dict[str, float] = field(default_factory=dict)
    identity: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return statistics.fmean(statistics.fmean(v) for v in self.accuracy_by_steps.values())

    @property
    def accuracy_std(self) -> float:
        """Spread over seeds of the mean accuracy (0 for one seed)."""
        per_seed = [statistics.fmean(v[i] for v in self.accuracy_by_steps.values()) for i in range(self.seeds)]
        return statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0


def arm_name(meta: dict) -> tuple[str, str, int | None, int | None]:
    """(label, arm, T, c) of a checkpoint's config.json."""
    arm = meta["train"]["arm"]
    latent = meta["config"]["latent"]
    if arm == "pccot":
        return f"pccot-T{latent['passes']}", arm, latent["passes"], latent["latents"]
    if arm == "seq":
        return "sequential", arm, latent["latents"], latent["latents"]
    return ("explicit-cot" if arm == "cot" else "no-cot"), arm, None, None


def correct(model: LatentReasoner, programs, arm: str, batch_size: int = 500) -> float:
    right = 0
    for i in range(0, len(programs), batch_size):
        chunk = programs[i : i + batch_size]
        tokens = arm_answers(model, chunk, arm).tokens
        right += int((tokens == torch.tensor([encode(str(p.answer))[0] for p in chunk])).sum())
    return right / len(programs)


def timed(model: LatentReasoner, programs, arm: str) -> tuple[float, int]:
    """(ms per question, forward passes) of one call on ``programs``."""
    start = time.perf_counter()
    passes = arm_answers(model, programs, arm).forward_passes
    return (time.perf_counter() - start) * 1000 / len(programs), passes


def measure_latency(arms: dict[str, tuple[LatentReasoner, str, list]], results: dict[str, ArmResult], count: int) -> None:
    """Median latency per question at batch 1 and 64, interleaved over arms (one arm's call, then the
    next's, on the same questions), so a busy machine slows every arm alike."""
    for batch, calls, key in ((1, count, "latency_b1_ms"), (64, max(2, count // 8), "latency_b64_ms")):
        samples: dict[str, list[tuple[float, int]]] = {label: [] for label in arms}
        for i in range(calls + 1):  # call 0 warms up
            for label, (model, arm, programs) in arms.items():
                chunk = [programs[(i * batch + j) % len(programs)] for j in range(batch)]
                if i:
                    samples[label].append(timed(model, chunk, arm))
                else:
                    timed(model, chunk, arm)
        for label, values in samples.items():
            setattr(results[label], key, statistics.median(v[0] for v in values))
            if batch == 1:
                results[label].forward_passes = statistics.fmean(v[1] for v in values)


@torch.no_grad()
def bench_pccot(config: PccotBenchConfig) -> list[ArmResult]:
    """Measure every arm; latency on the first seed of each arm at the hardest trained difficulty."""
    folders = config.runs or tuple(assets.get(name).path for name in assets.names("latent"))
    results: dict[str, ArmResult] = {}
    timed_arms: dict[str, tuple[LatentReasoner, str, list]] = {}
    for folder in sorted(folders):
        model, meta = load_reasoner(folder)
        label, arm, passes, latents = arm_name(meta)
        train = meta["train"]
        modulus = train.get("modulus", 23)
        steps = config.steps or tuple(range(train["min_steps"], train["max_steps"] + 1))
        result = results.setdefault(label, ArmResult(arm=label, T=passes, c=latents, seeds=0))
        result.seeds += 1
        for s in steps:
            result.accuracy_by_steps.setdefault(s, []).append(correct(model, heldout_set(s, modulus=modulus)[: config.per_difficulty], arm))
        if result.seeds == 1:
            hardest = heldout_set(max(steps), modulus=modulus)
            timed_arms[label] = (model, arm, hardest)
            result.train_s_per_1k_steps = meta.get("train_s_per_1k_steps_by_batch", {})
            if arm == "seq":
                result.identity = identity_check(model, hardest[:200])
    measure_latency(timed_arms, results, config.latency_questions)
    return list(results.values())


@torch.no_grad()
def identity_check(model: LatentReasoner, programs) -> dict[str, float]:
    """The T = c identity on a trained model: sequential (window 1), PCCoT with T = c, and exact
    Jacobi (tolerance rule at 0) give the same latents and answers."""
    questions, lengths = encode_questions(programs)
    c = model.latent.latents
    runs = {m: think(model, questions, lengths, method=m, passes=c) for m in ("sequential", "jacobi", "exact")}
    answers = {m: read_answer(model, t).logits.argmax(-1) for m, t in runs.items()}
    diff = max(float((runs[m].latents - runs["sequential"].latents).abs().max()) for m in ("jacobi", "exact"))
    agree = min(float((answers[m] == answers["sequential"]).float().mean()) for m in ("jacobi", "exact"))
    return {"max_latent_difference": diff, "answers_equal": agree, "exact_rule_sweeps": float(runs["exact"].stats.forward_passes)}


def records(results: list[ArmResult]) -> list[dict]:
    """One JSON object per arm (accuracy with its interval, latency, passes)."""
    sequential = next((r for r in results if r.arm == "sequential"), None)
    out = []
    for r in results:
        out.append({
            "arm": r.arm, "T": r.T, "c": r.c, "seeds": r.seeds,
            "accuracy": round(r.accuracy, 4), "accuracy_std": round(r.accuracy_std, 4),
            "accuracy_by_steps": {str(s): round(statistics.fmean(v), 4) for s, v in r.accuracy_by_steps.items()},
            "accuracy_std_by_steps": {str(s): round(statistics.stdev(v), 4) if len(v) > 1 else 0.0 for s, v in r.accuracy_by_steps.items()},
            "latency_b1_ms": round(r.latency_b1_ms, 3), "latency_b64_ms": round(r.latency_b64_ms, 4),
            "latency_vs_sequential": round(r.latency_b1_ms / sequential.latency_b1_ms, 3) if sequential else None,
            "latency_b64_vs_sequential": round(r.latency_b64_ms / sequential.latency_b64_ms, 3) if sequential else None,
            "forward_passes": r.forward_passes,
            "train_s_per_1k_steps": r.train_s_per_1k_steps,
            **({"identity_check": r.identity} if r.identity else {}),
        })
    return out


def table(results: list[ArmResult]) -> str:
    """A plain-text table: accuracy per difficulty (mean ± seed spread), latency, passes, training time."""
    rows = records(results)
    steps = sorted({int(s) for r in rows for s in r["accuracy_by_steps"]})
    head = f"{'arm':<14}{'seeds':>6}" + "".join(f"{f'{s} steps':>14}" for s in steps)
    head += f"{'mean':>14}{'b1 ms':>9}{'vs seq':>8}{'b64 ms':>9}{'passes':>8}{'train s/1k @8,@64':>20}"
    lines = [head]
    for r in rows:
        acc = "".join(f"{100 * r['accuracy_by_steps'].get(str(s), float('nan')):>8.1f}±{100 * r['accuracy_std_by_steps'].get(str(s), 0):<5.1f}"
                      for s in steps)
        ratio = f"{r['latency_vs_sequential']:.2f}" if r["latency_vs_sequential"] is not None else "-"
        train = r["train_s_per_1k_steps"]
        timing = f"{train.get('8', float('nan')):.0f}, {train.get('64', float('nan')):.0f}"
        lines.append(f"{r['arm']:<14}{r['seeds']:>6}{acc}{100 * r['accuracy']:>8.1f}±{100 * r['accuracy_std']:<5.1f}"
                     f"{r['latency_b1_ms']:>9.2f}{ratio:>8}{r['latency_b64_ms']:>9.3f}{r['forward_passes']:>8.1f}{timing:>20}")
    for r in rows:
        if "identity_check" in r:
            check = r["identity_check"]
            lines.append(f"T = c identity ({r['arm']}): sequential, PCCoT T=c and exact Jacobi agree on "
                         f"{100 * check['answers_equal']:.1f}% of answers, latents within {check['max_latent_difference']:.1e} "
                         f"(exact rule: {check['exact_rule_sweeps']:.0f} sweeps for c = {r['c']})")
    return "\n".join(lines)


def write_json(path: Path, results: list[ArmResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records(results), indent=2) + "\n")


__all__ = ["ArmResult", "PccotBenchConfig", "bench_pccot", "records", "table", "write_json"]
