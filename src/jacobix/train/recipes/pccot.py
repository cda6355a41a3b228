"""Train the arms of the PCCoT comparison (no CoT, explicit CoT, sequential latents, PCCoT) on generated arithmetic programs (``jacobix train pccot``).

Arms: ``nocot`` (answer right after the question), ``cot`` (explicit chain of thought), ``seq``
(sequential continuous CoT, CODI: c passes) and ``pccot`` (T Jacobi passes, arXiv 2506.18582).
The latent arms use CODI's loss, ``alpha * CE(teacher) + beta * CE(answer after the latents) +
gamma * KD``, where the teacher is the same model reading the explicit chain of thought and KD
compares hidden states at the answer prompt's last token (smooth-L1, each layer divided by the
teacher's std). Gradients flow through every latent pass. The checkpoint kept is the one with the
best accuracy by *generated* answers on a validation set (a seed stream apart from the bench's).

Two additions make the latents carry the steps (both off by default):

- ``curriculum`` (Coconut, arXiv 2412.06769): stage ``s`` replaces the first ``s`` written steps by
  ``s`` latents and keeps the rest written after ``<eot>`` (cross-entropy on them and on the
  answer); each stage lasts ``curriculum`` optimizer steps, then the full layout (c latents, the
  CODI loss) runs to the end. Programs of one length only (``min_steps == max_steps``).
- ``step_weight`` (a jacobix addition): the language-model head read at latent slot ``i`` is
  trained to say the value of step ``i + 1``, the token explicit CoT would write there, so latent
  ``i`` must hold step ``i``'s value (:func:`step_targets`).

    jacobix train pccot --arm pccot --passes 3 --seed 0 --out runs/pccot-T3-s0
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jacobix.core.checkpoints import read_weights
from jacobix.latent.arith import (ANSWER_PROMPT, BOT, EOS, EOT, PLACEHOLDER, SUITES, VALIDATION_SEED, VOCAB, Program, check_suite, encode,
                                  make_program, program_set)
from jacobix.latent.evaluate import ARMS, accuracy, encode_questions
from jacobix.latent.model import LatentConfig, LatentReasoner, ReasonerConfig, save_reasoner
from jacobix.latent.thoughts import read_answer, think
from jacobix.models.llama import LlamaConfig
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.options import count, natural, nonnegative, positive, require_data
from jacobix.train.distributed import RunOptions
from jacobix.train.curriculum import curriculum_stage, staged_tail, step_logits, step_targets
from jacobix.train.losses import IGNORE, distillation_loss, take_rows, token_ce
from jacobix.train.loop import FitConfig, StepEnd, fit
from jacobix.train.recipe import Recipe
from jacobix.train.schedule import WarmupCosine

log = logging.getLogger(__name__)
@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run. ``passes`` is T for ``pccot``; ``seq`` always uses T = c.

    The defaults are the CPU sweep of docs/latent.md (mod 5, 2-4 steps, c = 6, a 0.33M-parameter
    Llama, 1000 steps of 32 programs); the original mod-23 problems: ``--modulus 23``.
    """

    arm: str = "pccot"
    suite: str = "modular"
    latents: int = 6
    passes: int = 3
    min_steps: int = 2
    max_steps: int = 4
    modulus: int = 5
    train_steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    dim: int = 96
    layers: int = 3
    seed: int = 0
    eval_every: int = 200
    eval_per_difficulty: int = 100
    init: str = ""  # a checkpoint folder to start from (e.g. an explicit-CoT run); "" = from scratch
    curriculum: int = 0  # optimizer steps per curriculum stage; 0 = the full latent layout from the start
    step_weight: float = 0.0  # weight of the step-value loss at the latent slots

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {self.arm!r}")
        check_suite(self.suite)
        if self.latents < 1 or self.passes < 1:
            raise ValueError(f"latents (c) and passes (T) must be >= 1, got c={self.latents}, T={self.passes}")
        if not 1 <= self.min_steps <= self.max_steps <= 8:
            raise ValueError(f"need 1 <= min_steps <= max_steps <= 8, got {self.min_steps}, {self.max_steps}")
        if min(self.train_steps, self.batch_size, self.eval_every, self.eval_per_difficulty, self.dim, self.layers) < 1:
            raise ValueError("train_steps, batch_size, eval_every, eval_per_difficulty, dim and layers must be >= 1")
        if self.modulus < 2 or self.warmup < 0 or not 0 < self.lr < math.inf:
            raise ValueError(f"need modulus >= 2, warmup >= 0 and a finite lr > 0, got {self.modulus}, {self.warmup}, {self.lr}")
        if not all(0 <= w < math.inf for w in (self.alpha, self.beta, self.gamma, self.step_weight)):
            raise ValueError(f"alpha, beta, gamma and step_weight must be finite and >= 0, got {self.alpha}, {self.beta}, "
                             f"{self.gamma}, {self.step_weight}")
        if self.curriculum < 0:
            raise ValueError(f"curriculum must be >= 0 optimizer steps per stage, got {self.curriculum}")
        if self.curriculum and self.arm not in ("seq", "pccot"):
            raise ValueError(f"curriculum replaces written steps by latents: use it with --arm seq or pccot, not {self.arm}")
        if self.curriculum and self.min_steps != self.max_steps:
            raise ValueError(f"curriculum needs programs of one length: set --min-steps equal to --max-steps "
                             f"(got {self.min_steps} and {self.max_steps})")


@dataclass
class Batch:
    """Tensors of one batch (all right-padded).

    Attributes:
        questions: (B, Q) question tokens; lengths (B,).
        teacher: (B, L) ``question <bot> cot <eot> prompt answer <eos>``; targets (B, L) the next
            token where the loss applies (from ``<bot>`` on), else -100.
        anchor: (B,) index of the answer prompt's last token in ``teacher`` (the distillation position).
        answers: (B,) answer token ids.
        values: (B, S + 1) token ids of every variable's value, ``a`` first (-100 past a row's steps).
        stage: the curriculum stage's latents (:func:`curriculum_stage`); None for the full layout.
    """

    questions: Tensor
    lengths: Tensor
    teacher: Tensor
    targets: Tensor
    anchor: Tensor
    answers: Tensor
    values: Tensor
    stage: int | None = None


def teacher_rows(program: Program, *, with_cot: bool) -> tuple[list[int], int, int]:
    """(tokens, question length, anchor) of one teacher sequence; ``with_cot=False`` drops the CoT (no-CoT arm)."""
    question = encode(program.question)
    cot = encode(program.cot) if with_cot and program.cot else []
    tokens = question + [BOT] + cot + [EOT, *ANSWER_PROMPT] + encode(str(program.answer)) + [EOS]
    anchor = len(question) + 1 + len(cot) + len(ANSWER_PROMPT)  # the prompt's last token
    return tokens, len(question), anchor


def make_batch(programs: list[Program], *, with_cot: bool = True) -> Batch:
    """The :class:`Batch` of ``programs``."""
    rows = [teacher_rows(p, with_cot=with_cot) for p in programs]
    width = max(len(r[0]) for r in rows)
    teacher = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (tokens, q, _) in enumerate(rows):
        teacher[i, : len(tokens)] = torch.tensor(tokens)
        targets[i, q : len(tokens) - 1] = torch.tensor(tokens[q + 1 :])  # predict everything after <bot>
    questions, lengths = encode_questions(programs)
    answers = torch.tensor([encode(str(p.answer))[0] for p in programs])
    values = torch.full((len(programs), max(p.steps for p in programs) + 1), IGNORE, dtype=torch.long)
    for i, p in enumerate(programs):
        values[i, : p.steps + 1] = torch.tensor(encode(";".join(str(v) for v in p.values))[::2])
    return Batch(questions, lengths, teacher, targets, torch.tensor([r[2] for r in rows]), answers, values)


def codi_loss(model: LatentReasoner, batch: Batch, config: TrainConfig, stage: int | None = None) -> tuple[Tensor, dict[str, float]]:
    """The arm's loss on one batch, and its parts (detached, for the log); ``stage``: the latents of a
    curriculum stage (:func:`curriculum_stage`), None for the full layout."""
    out = model.lm(batch.teacher, return_hidden=True)
    teacher_ce = token_ce(out.logits, batch.targets)
    if config.arm in ("nocot", "cot"):
        return teacher_ce, {"teacher": teacher_ce.detach()}
    method = "sequential" if config.arm == "seq" else "jacobi"
    if stage is not None:
        return _staged_loss(model, batch, config, stage, teacher_ce, method)
    thoughts = think(model, batch.questions, batch.lengths, method=method, differentiable=True)
    student = read_answer(model, thoughts)
    answer_ce = F.cross_entropy(student.logits, batch.answers)
    kd = distillation_loss(student.hidden[1:], tuple(take_rows(h, batch.anchor) for h in out.hidden_states[1:]))
    loss = config.alpha * teacher_ce + config.beta * answer_ce + config.gamma * kd
    parts = {"teacher": teacher_ce.detach(), "answer": answer_ce.detach(), "kd": kd.detach()}
    if config.step_weight:
        c = model.latent.latents
        step_ce = token_ce(step_logits(model, thoughts, student, c), step_targets(batch.values, c))
        loss, parts["steps"] = loss + config.step_weight * step_ce, step_ce.detach()
    return loss, parts


def _staged_loss(model: LatentReasoner, batch: Batch, config: TrainConfig, stage: int, teacher_ce: Tensor,
                 method: str) -> tuple[Tensor, dict[str, float]]:
    """A curriculum stage: ``stage`` latents, the written steps left after ``<eot>``, cross-entropy on them and the answer."""
    written = batch.values.shape[1] - 2  # CODI drops the last step from the written chain
    cot = [row[row.index(BOT) + 1 : row.index(EOT)] for row in batch.teacher.tolist()]
    tail = staged_tail(cot, written - stage, batch.answers).to(batch.questions.device)  # (B, R)
    thoughts = think(model, batch.questions, batch.lengths, method=method, differentiable=True, latents=stage,
                     tail=tail.shape[1])
    student = read_answer(model, thoughts, tail)
    tail_ce = F.cross_entropy(student.every_logits[:, stage:-1].flatten(0, 1), tail[:, 1:].flatten())
    loss = config.alpha * teacher_ce + config.beta * tail_ce
    parts = {"teacher": teacher_ce.detach(), "tail": tail_ce.detach()}
    if config.step_weight:
        step_ce = token_ce(step_logits(model, thoughts, student, stage), step_targets(batch.values, stage))
        loss, parts["steps"] = loss + config.step_weight * step_ce, step_ce.detach()
    return loss, parts


def build_model(config: TrainConfig) -> LatentReasoner:
    passes = config.latents if config.arm == "seq" else config.passes
    max_len = 2 * (4 + 6 * config.max_steps + 2) + 2 * config.latents + 16
    llama = LlamaConfig(vocab_size=len(VOCAB), dim=config.dim, num_layers=config.layers, num_heads=4, num_kv_heads=2,
                        hidden_dim=int(8 * config.dim / 3) // 8 * 8, max_seq_len=max_len)
    latent = LatentConfig(latents=config.latents, passes=passes, bot=BOT, eot=EOT, placeholder=PLACEHOLDER, prompt=ANSWER_PROMPT)
    return LatentReasoner(ReasonerConfig(llama=llama, latent=latent))


def sample_programs(config: TrainConfig, rng: random.Random, count: int) -> list[Program]:
    return [make_program(rng.randint(config.min_steps, config.max_steps), rng, config.modulus, config.suite) for _ in range(count)]


def seconds_per_1k_steps(config: TrainConfig, batch_size: int, steps: int = 10) -> float:
    """Wall seconds per 1000 optimizer steps at ``batch_size`` (a throwaway model; after one warm-up step)."""
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    rng = random.Random(12345)
    batches = [make_batch(sample_programs(config, rng, batch_size), with_cot=config.arm != "nocot") for _ in range(steps + 1)]
    for i, batch in enumerate(batches):
        if i == 1:
            start = time.perf_counter()
        loss, _ = codi_loss(model, batch, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return 1000 * (time.perf_counter() - start) / steps


def validation_set(config: TrainConfig) -> list[Program]:
    return [p for s in range(config.min_steps, config.max_steps + 1) for p in program_set(s, config.eval_per_difficulty, VALIDATION_SEED, config.modulus, config.suite)]


class ProgramBatches:
    """Batches of freshly generated programs from ``random.Random(seed)`` (the stream is the same on every
    rank; a checkpoint carries its state)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config, self.rng = config, random.Random(config.seed)

    def __call__(self, step: int, generator: torch.Generator) -> Batch:
        programs = sample_programs(self.config, self.rng, self.config.batch_size)
        stage = curriculum_stage(step, self.config.curriculum, self.config.max_steps - 1)
        return replace(make_batch(programs, with_cot=self.config.arm != "nocot"), stage=stage)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


class Objective(nn.Module):
    """The arm's loss as a ``forward`` (:func:`codi_loss`), so DDP sees the pass it synchronises."""

    def __init__(self, model: LatentReasoner, config: TrainConfig) -> None:
        super().__init__()
        self.model, self.config = model, config

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        # a rank's rows keep the global batch's question padding; cut it to the rows' longest, as make_batch would
        questions = batch.questions[:, : int(batch.lengths.max())]  # (B, Q)
        return codi_loss(self.model, replace(batch, questions=questions), self.config, batch.stage)


class BestByValidation:
    """Every ``eval_every`` steps (and at the last), rank 0 scores generated validation answers and keeps
    the best weights; a checkpoint carries them."""

    def __init__(self, model: LatentReasoner, config: TrainConfig) -> None:
        self.model, self.config, self.validation = model, config, validation_set(config)
        self.best, self.weights, self.seconds = -1.0, {}, 0.0

    def __call__(self, end: StepEnd) -> None:
        done = end.step + 1
        if not end.run.is_main or (done % self.config.eval_every and done != self.config.train_steps):
            return
        start = time.perf_counter()
        self.model.eval()
        score = accuracy(self.model, self.validation, self.config.arm)
        if score > self.best:
            self.best, self.weights = score, copy.deepcopy(self.model.state_dict())
        self.seconds += time.perf_counter() - start
        log.info("step %d loss %.3f val %.3f best %.3f", done, end.metrics["loss"], score, self.best)

    def state_dict(self) -> dict:
        return {"best": self.best, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.weights = state["best"], state["weights"]


def train(out_dir, config: TrainConfig, *, time_batches: tuple[int, ...] = (),
          options: RunOptions = RunOptions()) -> dict:
    """Train one arm, keep the best checkpoint by generated validation answers; returns the summary.

    ``options``: resume, checkpoint frequency, early stop (:class:`RunOptions`; DDP only, no FSDP).
    """
    if options.fsdp:
        raise ValueError("--fsdp: rank 0 scores the validation set between steps; pccot trains with DDP (drop --fsdp)")
    run = distributed.setup()
    torch.manual_seed(config.seed)
    timings = {str(b): round(seconds_per_1k_steps(config, b), 1) for b in time_batches}
    torch.manual_seed(config.seed)
    model = build_model(config)
    if config.init:
        model.load_state_dict(read_weights(config.init))  # strict: the shapes must match this run's
    log.info("arm %s T=%d c=%d: %d parameters", config.arm, model.latent.passes, config.latents, sum(p.numel() for p in model.parameters()))
    objective = distributed.wrap(Objective(model, config), run)
    best, data = BestByValidation(model, config), ProgramBatches(config)
    fit_config = FitConfig(schedule=WarmupCosine(peak=config.lr, steps=config.train_steps, warmup=config.warmup),
                           weight_decay=0.01, betas=(0.9, 0.98), seed=config.seed, log_every=config.eval_every)
    result = fit(objective, lambda module, batch: module(batch), data, fit_config, run=run, options=options,
                 out=Path(out_dir), on_step=best, state={"data": data, "best": best})
    summary = {}
    if run.is_main and result.finished:
        model.load_state_dict(best.weights)
        train_seconds = result.seconds - best.seconds
        summary = {"train": asdict(config), "validation_accuracy": round(best.best, 4),
                   "train_seconds": round(train_seconds, 1),
                   "train_s_per_1k_steps": round(1000 * train_seconds / (result.last - result.first), 1),
                   "train_s_per_1k_steps_by_batch": timings}
        save_reasoner(model.eval(), out_dir, extra=summary)
    run.close()
    return summary


PCCOT_HELP = {  # command-line help of each TrainConfig field
    "latents": "continuous thoughts (c)", "passes": "Jacobi passes over the thoughts (T; pccot arm)",
    "min_steps": "fewest program steps", "max_steps": "most program steps", "modulus": "arithmetic modulus",
    "train_steps": "optimizer steps", "batch_size": "programs per step, global (all processes)",
    "seed": "seed of initialisation and programs", "eval_every": "score the validation set every N steps",
    "dim": "model width", "layers": "transformer layers", "eval_per_difficulty": "validation programs per step count",
    "warmup": "warm-up steps", "lr": "peak learning rate", "alpha": "weight of the teacher's cross-entropy",
    "beta": "weight of the answer's cross-entropy", "gamma": "weight of the hidden-state distillation",
    "curriculum": "optimizer steps per curriculum stage (stage s: s latents replace the first s written steps); 0: none",
    "step_weight": "weight of the loss that makes latent slot i say step i+1's value",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options (one per :class:`TrainConfig` field)."""
    parser.add_argument("--arm", choices=ARMS, default=TrainConfig.arm, help="nocot, cot, seq (CODI) or pccot (Jacobi)")
    parser.add_argument("--suite", choices=SUITES, default=TrainConfig.suite,
                        help="chain (every operand a constant: one value per step) or modular (operands may be earlier variables)")
    add_output_arguments(parser, "pccot")
    defaults = TrainConfig()
    for name in ("latents", "passes", "min_steps", "max_steps", "train_steps", "batch_size", "seed", "eval_every", "dim", "layers",
                 "eval_per_difficulty", "warmup", "modulus", "curriculum"):
        kind = natural if name in ("seed", "warmup", "curriculum") else count
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name), help=PCCOT_HELP[name])
    for name in ("lr", "alpha", "beta", "gamma", "step_weight"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=positive if name == "lr" else nonnegative, default=getattr(defaults, name),
                            help=PCCOT_HELP[name])
    parser.add_argument("--init", default="", help="start from this checkpoint folder (e.g. an explicit-CoT run)")
    parser.add_argument("--time-batches", default="", help="also time training steps at these batch sizes, e.g. 8,64")
    distributed.add_distributed_arguments(parser)


def resolve(args: argparse.Namespace) -> None:
    """``out`` (the bundled folder is ``pccot`` or ``pccot-ARM``; ``pccot-chain`` or ``pccot-chain-ARM`` for the
    chain suite) and ``config`` (:class:`TrainConfig`)."""
    base = "pccot" if args.suite == "modular" else "pccot-chain"
    bundled = base if args.arm == "pccot" else f"{base}-{args.arm}"
    args.config = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.__dataclass_fields__})
    if args.init:
        require_data(args.init, "--init", "a checkpoint folder to start from")
    try:
        args.time_batches = tuple(int(b) for b in args.time_batches.split(",") if b) if isinstance(args.time_batches, str) \
            else args.time_batches
    except ValueError:
        raise ValueError(f"--time-batches {args.time_batches!r}: give batch sizes separated by commas, e.g. 8,64") from None
    if any(b < 1 for b in args.time_batches):
        raise ValueError(f"--time-batches: batch sizes must be >= 1, got {args.time_batches}")
    args.options = RunOptions.from_args(args)
    args.options.last_step(args.train_steps)
    args.out = output_folder(args, bundled)


def run(args: argparse.Namespace) -> None:
    """``jacobix train pccot --arm ARM [--passes T] [--seed S] [--out DIR] ...``."""
    torch.set_num_threads(1)
    summary = train(args.out, args.config, time_batches=args.time_batches, options=args.options)
    if summary:
        log.info("wrote %s: validation accuracy %.3f, %.1f s per 1k steps", args.out, summary["validation_accuracy"],
                 summary["train_s_per_1k_steps"])


RECIPE = Recipe(name="pccot", help="one arm of the PCCoT comparison (no CoT, explicit CoT, sequential latents or PCCoT)", add_arguments=add_arguments,
                resolve=resolve, run=run)
parse_args, main = RECIPE.parse_args, RECIPE.main

__all__ = ["RECIPE", "Batch", "TrainConfig", "codi_loss", "curriculum_stage", "staged_tail", "step_logits", "step_targets", "distillation_loss", "main", "make_batch", "parse_args",
           "take_rows", "token_ce", "train"]

if __name__ == "__main__":
    main()
