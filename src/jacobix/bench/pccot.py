"""``jacobix bench pccot``: the PCCoT arms side by side on a suite's fixed held-out programs.

Reads checkpoints written by ``jacobix train pccot`` (one folder per arm and seed; the suite's
bundled ones by default) and reports, per arm: accuracy by generated answers with a 95% Wilson
interval over the held-out problems (per difficulty too), inference latency per question at
batch 1 and 64 (interleaved over arms), forward passes per question, and for latent arms a linear
probe per latent position for the value of the step it replaced.

Arms: ``no-cot``, ``explicit-cot``, ``sequential`` (c latent passes) and ``pccot-T1`` ..
``pccot-Tc``: a PCCoT checkpoint run with T Jacobi passes (the checkpoint trained at that T if
there is one, else the one trained nearest to it; ``trained_T`` says which).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jacobix import assets
from jacobix.latent.arith import SUITES, VALIDATION_SEED, heldout_set, program_set
from jacobix.latent.evaluate import arm_answers, correct, encode_questions
from jacobix.latent.model import LatentReasoner, load_reasoner
from jacobix.latent.probes import probe_accuracy
from jacobix.latent.thoughts import read_answer, think

PROBE_SEED = VALIDATION_SEED + 1  # the probes are fitted on programs apart from validation and test


@dataclass(frozen=True, kw_only=True)
class PccotBenchConfig:
    """What to measure.

    Attributes:
        suite: ``chain`` or ``modular`` (the suite every checkpoint must have been trained on).
        runs: checkpoint folders (each from ``jacobix train pccot``); empty: the suite's bundled ones.
        per_difficulty: held-out programs per difficulty (the fixed set holds 2000).
        latency_questions: questions timed one by one at batch 1 (and batches of 64 timed).
        steps: difficulties to score; empty: the trained range of each checkpoint.
        probe_programs: programs the probes are fitted on (scored on the held-out ones); 0: no probes.
    """

    suite: str = "modular"
    runs: tuple[Path, ...] = ()
    per_difficulty: int = 2000
    latency_questions: int = 40
    steps: tuple[int, ...] = ()
    probe_programs: int = 2000

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"suite must be one of {SUITES}, got {self.suite!r}")
        if not 1 <= self.per_difficulty <= 2000:
            raise ValueError(f"per_difficulty must be in 1..2000 (the held-out set), got {self.per_difficulty}")
        if self.latency_questions < 1:
            raise ValueError(f"latency_questions must be >= 1, got {self.latency_questions}")
        if self.probe_programs < 0:
            raise ValueError(f"probe_programs must be >= 0, got {self.probe_programs}")


@dataclass
class Checkpoint:
    """One loaded checkpoint and what its config.json says of it."""

    folder: Path
    model: LatentReasoner
    arm: str  # nocot, cot, seq, pccot
    trained_T: int | None
    modulus: int
    steps: tuple[int, ...]
    meta: dict = field(default_factory=dict)  # its config.json


@dataclass
class ArmResult:
    """One arm (all its seeds)."""

    arm: str
    T: int | None
    c: int | None
    trained_T: int | None = None
    seeds: int = 0
    right_by_steps: dict[int, list[int]] = field(default_factory=dict)
    total_by_steps: dict[int, int] = field(default_factory=dict)
    latency_b1_ms: float = 0.0
    latency_b64_ms: float = 0.0
    forward_passes: float = 0.0
    train_s_per_1k_steps: dict[str, float] = field(default_factory=dict)
    identity: dict[str, float] = field(default_factory=dict)
    probe_accuracy: list[float | None] | None = None

    def accuracy_of(self, steps: int) -> float:
        return statistics.fmean(self.right_by_steps[steps]) / self.total_by_steps[steps]

    @property
    def right(self) -> int:
        return sum(sum(v) for v in self.right_by_steps.values())

    @property
    def total(self) -> int:
        return self.seeds * sum(self.total_by_steps.values())

    @property
    def accuracy(self) -> float:
        return self.right / self.total

    @property
    def accuracy_std(self) -> float:
        """Spread over seeds of the accuracy (0 for one seed)."""
        per_seed = [sum(v[i] for v in self.right_by_steps.values()) / sum(self.total_by_steps.values()) for i in range(self.seeds)]
        return statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0


def wilson(right: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of ``right`` out of ``total``."""
    if total <= 0:
        return 0.0, 1.0
    p = right / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def load_checkpoint(folder: Path, suite: str) -> Checkpoint:
    """Load one run and check it was trained on ``suite``'s suite."""
    model, meta = load_reasoner(folder)
    train = meta.get("train", {})
    suite = train.get("suite", "modular")
    if suite != suite:
        raise ValueError(f"{folder} was trained on the {suite} suite, not {suite}: bench it with --suite {suite}, "
                         f"or leave it out of --runs")
    arm = train["arm"]
    return Checkpoint(folder=Path(folder), model=model, arm=arm,
                      trained_T=meta["config"]["latent"]["passes"] if arm == "pccot" else None,
                      modulus=train.get("modulus", 23), steps=tuple(range(train["min_steps"], train["max_steps"] + 1)), meta=meta)


def bundled(suite: str) -> tuple[Path, ...]:
    """The suite's bundled checkpoint folders."""
    folders = []
    for name in assets.names("latent"):
        folder = assets.get(name).path
        if not (folder / "config.json").is_file():
            raise ValueError(f"the bundled checkpoint {name} is missing from {folder}; reinstall jacobix, rebuild it with "
                             f"`{assets.get(name).rebuild}`, or pass your own folders with --runs")
        meta = json.loads((folder / "config.json").read_text())
        if meta.get("train", {}).get("suite", "modular") == suite:
            folders.append(folder)
    return tuple(folders)


def arm_plan(checkpoints: list[Checkpoint]) -> dict[str, list[tuple[Checkpoint, str, int | None]]]:
    """Label -> (checkpoint, evaluation arm, T) for every arm: PCCoT checkpoints give pccot-T1..Tc."""
    plan: dict[str, list[tuple[Checkpoint, str, int | None]]] = {}
    names = {"nocot": "no-cot", "cot": "explicit-cot", "seq": "sequential"}
    pccot = [c for c in checkpoints if c.arm == "pccot"]
    for c in checkpoints:
        if c.arm in names:
            plan.setdefault(names[c.arm], []).append((c, c.arm, None))
    if pccot:
        widest = max(c.model.latent.latents for c in pccot)
        trained = sorted({c.trained_T for c in pccot})
        for t in range(1, widest + 1):
            nearest = min(trained, key=lambda s: (abs(s - t), s))
            plan[f"pccot-T{t}"] = [(c, "pccot", t) for c in pccot if c.trained_T == nearest]
    return plan


def timed(model: LatentReasoner, programs, arm: str, passes: int | None) -> tuple[float, int]:
    """(ms per question, forward passes) of one call on ``programs``."""
    start = time.perf_counter()
    count = arm_answers(model, programs, arm, passes).forward_passes
    return (time.perf_counter() - start) * 1000 / len(programs), count


def measure_latency(arms: dict[str, tuple[LatentReasoner, str, int | None, list]], results: dict[str, ArmResult],
                    count: int) -> None:
    """Median latency per question at batch 1 and 64, interleaved over arms (one arm's call, then the
    next's, on the same questions), so a busy machine slows every arm alike."""
    for batch, calls, key in ((1, count, "latency_b1_ms"), (64, max(2, count // 8), "latency_b64_ms")):
        samples: dict[str, list[tuple[float, int]]] = {label: [] for label in arms}
        for i in range(calls + 1):  # call 0 warms up
            for label, (model, arm, passes, programs) in arms.items():
                chunk = [programs[(i * batch + j) % len(programs)] for j in range(batch)]
                sample = timed(model, chunk, arm, passes)
                if i:
                    samples[label].append(sample)
        for label, values in samples.items():
            setattr(results[label], key, statistics.median(v[0] for v in values))
            if batch == 1:
                results[label].forward_passes = statistics.fmean(v[1] for v in values)


@torch.no_grad()
def bench_pccot(config: PccotBenchConfig) -> list[ArmResult]:
    """Measure every arm; latency and probes on the first seed of each arm at the hardest trained difficulty."""
    folders = config.runs or bundled(config.suite)
    if not folders:
        raise ValueError(f"no checkpoints for the {config.suite} suite: train them with `jacobix train pccot --suite "
                         f"{config.suite}` and pass their folders with --runs")
    checkpoints = [load_checkpoint(folder, config.suite) for folder in sorted(folders)]
    results: dict[str, ArmResult] = {}
    timed_arms: dict[str, tuple[LatentReasoner, str, int | None, list]] = {}
    for label, members in arm_plan(checkpoints).items():
        first = members[0][0]
        passes = members[0][2]
        c = first.model.latent.latents if first.arm in ("seq", "pccot") else None
        T = c if first.arm == "seq" else passes
        result = results[label] = ArmResult(arm=label, T=T, c=c, trained_T=first.trained_T)
        for checkpoint, arm, t in members:
            result.seeds += 1
            for s in config.steps or checkpoint.steps:
                programs = heldout_set(s, modulus=checkpoint.modulus, suite=config.suite)[: config.per_difficulty]
                result.right_by_steps.setdefault(s, []).append(correct(checkpoint.model, programs, arm, t))
                result.total_by_steps[s] = len(programs)
        hardest = max(config.steps or first.steps)
        test = heldout_set(hardest, modulus=first.modulus, suite=config.suite)
        timed_arms[label] = (first.model, members[0][1], passes, test)
        result.train_s_per_1k_steps = first.meta.get("train_s_per_1k_steps_by_batch", {})
        if first.arm == "seq":
            result.identity = identity_check(first.model, test[:200])
        if c is not None and config.probe_programs:
            train = program_set(hardest, config.probe_programs, PROBE_SEED, first.modulus, config.suite)
            result.probe_accuracy = probe_accuracy(first.model, train, test[: config.per_difficulty],
                                                   method="sequential" if first.arm == "seq" else "jacobi", passes=passes)
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


def records(results: list[ArmResult], suite: str = "modular") -> list[dict]:
    """One JSON object per arm (accuracy with its interval, latency, passes, probes)."""
    by_arm = {r.arm: r for r in results}

    def versus(r: ArmResult, other: str, key: str) -> float | None:
        base = by_arm.get(other)
        return round(getattr(r, key) / getattr(base, key), 3) if base is not None and getattr(base, key) else None

    out = []
    for r in results:
        low, high = wilson(r.right, r.total)
        out.append({
            "suite": suite, "arm": r.arm, "T": r.T, "c": r.c, "trained_T": r.trained_T, "seeds": r.seeds,
            "accuracy": round(r.accuracy, 4), "accuracy_low": round(low, 4), "accuracy_high": round(high, 4),
            "accuracy_std": round(r.accuracy_std, 4), "problems": r.total,
            "accuracy_by_steps": {str(s): round(r.accuracy_of(s), 4) for s in r.right_by_steps},
            "latency_b1_ms": round(r.latency_b1_ms, 3), "latency_b64_ms": round(r.latency_b64_ms, 4),
            "latency_vs_sequential": versus(r, "sequential", "latency_b1_ms"),
            "latency_vs_explicit": versus(r, "explicit-cot", "latency_b1_ms"),
            "latency_b64_vs_sequential": versus(r, "sequential", "latency_b64_ms"),
            "forward_passes": r.forward_passes,
            "train_s_per_1k_steps": r.train_s_per_1k_steps,
            **({"probe_accuracy": [None if a is None else round(a, 4) for a in r.probe_accuracy]}
               if r.probe_accuracy is not None else {}),
            **({"identity_check": r.identity} if r.identity else {}),
        })
    return out


def table(results: list[ArmResult], suite: str = "modular") -> str:
    """A plain-text table: accuracy with its interval, latency against sequential and explicit CoT, passes, probes."""
    rows = records(results, suite)
    head = (f"{'arm':<14}{'from T':>7}{'accuracy [95% interval]':>26}{'b1 ms':>9}{'vs seq':>8}{'vs CoT':>8}"
            f"{'b64 ms':>9}{'passes':>8}  probe accuracy by latent")
    lines = [f"suite {suite}: {rows[0]['problems'] // max(rows[0]['seeds'], 1) if rows else 0} held-out problems per arm and seed",
             head]

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for r in rows:
        interval = f"{100 * r['accuracy']:.1f} [{100 * r['accuracy_low']:.1f}, {100 * r['accuracy_high']:.1f}]"
        probes = " ".join("-" if a is None else f"{100 * a:.0f}" for a in r.get("probe_accuracy", []))
        trained = "-" if r["trained_T"] is None else str(r["trained_T"])
        lines.append(f"{r['arm']:<14}{trained:>7}{interval:>26}{r['latency_b1_ms']:>9.2f}{ratio(r['latency_vs_sequential']):>8}"
                     f"{ratio(r['latency_vs_explicit']):>8}{r['latency_b64_ms']:>9.3f}{r['forward_passes']:>8.1f}  {probes}")
    for r in rows:
        if "identity_check" in r:
            check = r["identity_check"]
            lines.append(f"T = c identity ({r['arm']}): sequential, PCCoT T=c and exact Jacobi agree on "
                         f"{100 * check['answers_equal']:.1f}% of answers, latents within {check['max_latent_difference']:.1e} "
                         f"(exact rule: {check['exact_rule_sweeps']:.0f} sweeps for c = {r['c']})")
    return "\n".join(lines)


def write_json(path: Path, results: list[ArmResult], suite: str = "modular") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records(results, suite), indent=2) + "\n")


__all__ = ["ArmResult", "PccotBenchConfig", "arm_plan", "bench_pccot", "bundled", "records", "table", "wilson", "write_json"]
