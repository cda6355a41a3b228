"""The one training loop: schedule, AdamW, clipping, checkpoints, resume, metrics, torchrun.

A recipe hands :func:`fit` a model (already through :func:`jacobix.train.distributed.wrap`), a
pure loss ``loss_fn(model, batch) -> (loss, metrics)``, a batch source
``batches(step, generator) -> global batch`` and a :class:`FitConfig`::

    run = distributed.setup()
    model = distributed.wrap(Llama(config), run, fsdp=options.fsdp)
    result = fit(model, loss_fn, batches, FitConfig(schedule=WarmupCosine(peak=3e-3, steps=1200, warmup=100)),
                 run=run, options=options, out=out)
    if result.finished: ...gather the weights (distributed.full_state_dict) and save the model

Every rank draws the same global batch from the same seeded generator and trains on its own
contiguous rows (:func:`shard_batch`), so N processes follow the 1-process loss curve. A batch is
a tensor, a tuple of tensors or a dataclass whose tensor fields share dim 0. The checkpoint
(``OUT/checkpoint.pt``, every ``--save-every`` steps and at ``--stop-after``) holds the model,
optimizer, step, the batch generator, torch's RNG, the recent losses and the ``state`` of any
:class:`Stateful` the recipe passes; it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from jacobix.train import distributed
from jacobix.train.distributed import Run, RunOptions
from jacobix.train.schedule import Rates, Schedule

log = logging.getLogger(__name__)
RECENT = 100  # losses kept for FitResult.recent (and carried in checkpoints)

LossFn = Callable[[nn.Module, Any], tuple[Tensor, Mapping[str, Tensor | float]]]
"""``loss_fn(model, batch) -> (loss, metrics)``: the scalar to minimise on this rank's rows and
named scalars to log (each averaged over ranks)."""

BatchSource = Callable[[int, torch.Generator], Any]
"""``batches(step, generator) -> global batch``: the whole step's batch, drawn the same on every rank."""


class Stateful(Protocol):
    """Recipe state that a checkpoint carries (a data stream's RNG, counters, the best weights so far)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class StepEnd:
    """What an ``on_step`` hook sees after an optimizer step.

    Attributes:
        step: the step just taken (0-based).
        model: the trained (wrapped) model, in train mode.
        batch: the global batch of the step (not sharded).
        metrics: the step's logged values (global means), ``loss`` and ``lr`` included.
        generator: the batch generator (a hook may draw from it, in the same order on every rank).
        run: this process's place in the job.
    """

    step: int
    model: nn.Module
    batch: Any
    metrics: dict[str, float]
    generator: torch.Generator
    run: Run


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """Optimisation settings of :func:`fit`.

    Attributes:
        schedule: the learning rate (and beta1) per step; its ``steps`` is the run's length.
        weight_decay: AdamW's decoupled weight decay (0 makes it Adam).
        betas: AdamW's moment decays.
        clip: clip the gradient norm to this (None: no clipping).
        seed: seed of the batch generator.
        log_every: log a line every this many steps (and at the last).
        progress: a tqdm bar on rank 0; None shows it only when stderr is a terminal.
    """

    schedule: Schedule
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float | None = 1.0
    seed: int = 0
    log_every: int = 100
    progress: bool | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.weight_decay < math.inf or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"FitConfig needs weight_decay >= 0 and betas in [0, 1), got {self.weight_decay}, {self.betas}")
        if self.clip is not None and not 0 < self.clip < math.inf:
            raise ValueError(f"FitConfig.clip must be > 0 or None, got {self.clip}")
        if self.log_every < 1:
            raise ValueError(f"FitConfig.log_every must be >= 1, got {self.log_every}")

    @property
    def steps(self) -> int:
        return self.schedule.steps


@dataclass
class FitResult:
    """What a run did.

    Attributes:
        first, last: the steps run, ``range(first, last)`` (``first > 0`` after ``--resume``).
        finished: True when the run reached the schedule's end (not stopped by ``--stop-after``).
        history: the logged values of each step run here (global means), ``step`` included.
        recent: the last 100 global losses, across a resume.
        seconds: wall time of the loop.
    """

    first: int
    last: int
    finished: bool
    history: list[dict[str, float]] = field(default_factory=list)
    recent: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def recent_loss(self, count: int = RECENT) -> float:
        """The mean of the last ``count`` (at most 100) global losses (nan before any step)."""
        values = self.recent[-count:]
        return sum(values) / len(values) if values else float("nan")


def shard_batch(batch: Any, run: Run) -> Any:
    """This rank's rows of a global batch: a tensor, a tuple/list of them (None kept) or a dataclass."""
    if isinstance(batch, Tensor):
        return run.shard(batch)[0]
    if isinstance(batch, (tuple, list)):
        return type(batch)(None if item is None else shard_batch(item, run) for item in batch)
    if dataclasses.is_dataclass(batch):
        tensors = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)
                   if isinstance(getattr(batch, f.name), Tensor)}
        return dataclasses.replace(batch, **dict(zip(tensors, run.shard(*tensors.values()))))
    raise TypeError(f"shard_batch: a batch must be a tensor, a tuple of tensors or a dataclass, got {type(batch)}")


def make_optimizer(params, config: FitConfig) -> torch.optim.Optimizer:
    """AdamW with the config's weight decay and betas (the rate is set per step)."""
    return torch.optim.AdamW(params, lr=config.schedule(0).lr, weight_decay=config.weight_decay, betas=config.betas)


def set_rates(optimizer: torch.optim.Optimizer, rates: Rates) -> None:
    """Write a step's learning rate (and beta1, when the schedule moves it) into every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = rates.lr
        if rates.beta1 is not None:
            group["betas"] = (rates.beta1, group["betas"][1])


def fit(model: nn.Module, loss_fn: LossFn, batches: BatchSource, config: FitConfig, *, run: Run | None = None,
        options: RunOptions = RunOptions(), out: Path | None = None, params: list[nn.Parameter] | None = None,
        on_step: Callable[[StepEnd], None] | None = None, state: Mapping[str, Stateful] | None = None) -> FitResult:
    """Train ``model`` in place for the schedule's steps (or up to ``--stop-after``), alone or under torchrun.

    Args:
        model: the module trained, already through :func:`distributed.wrap` when ``run`` is distributed.
        loss_fn: ``(model, this rank's rows) -> (loss, metrics)``.
        batches: ``(step, generator) -> global batch``; sharded here.
        config: schedule, optimizer, clipping, seed, logging.
        run: from :func:`distributed.setup` (default: one process).
        options: resume, checkpoint frequency, early stop.
        out: folder for ``metrics.jsonl`` and ``checkpoint.pt`` (None: neither is written).
        params: the parameters to optimise and clip (default: ``model.parameters()``).
        on_step: called on every rank after each step (partial saves, evaluations, code restarts).
        state: recipe state carried by checkpoints, by name.
    Returns:
        the :class:`FitResult`.
    """
    run = run or Run()
    params = list(model.parameters() if params is None else params)
    optimizer = make_optimizer(params, config)
    generator = torch.Generator().manual_seed(config.seed)
    first = distributed.load_checkpoint(options.resume, run, model=model, optimizer=optimizer, generator=generator)
    saved = distributed.checkpoint_extra(options.resume)
    for name, holder in (state or {}).items():
        if name in saved.get("state", {}):
            holder.load_state_dict(saved["state"][name])
    last = options.last_step(config.steps)
    result = FitResult(first=first, last=last, finished=last == config.steps, recent=list(saved.get("recent", [])))
    metrics = distributed.Metrics(out / distributed.METRICS, run, first) if out is not None else None
    bar = _progress(config, run, first, last)
    start = time.perf_counter()
    for step in range(first, last):
        values = _step(model, loss_fn, batches, config, optimizer, params, generator, run, step, on_step)
        result.history.append(values)
        result.recent = (result.recent + [values["loss"]])[-RECENT:]
        if metrics is not None:
            metrics.log(step, **{k: v for k, v in values.items() if k != "step"})
        _report(config, step, values, bar, start)
        if out is not None and _save_due(options, step + 1, config.steps):
            extra = {"recent": result.recent, "state": {name: h.state_dict() for name, h in (state or {}).items()}}
            distributed.save_checkpoint(out / distributed.CHECKPOINT, run, model=model, optimizer=optimizer,
                                        step=step + 1, generator=generator, extra=extra)
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def _step(model: nn.Module, loss_fn: LossFn, batches: BatchSource, config: FitConfig, optimizer: torch.optim.Optimizer,
          params: list[nn.Parameter], generator: torch.Generator, run: Run, step: int,
          on_step: Callable[[StepEnd], None] | None) -> dict[str, float]:
    """One optimizer step on this rank's rows of the step's global batch; returns the logged values."""
    rates = config.schedule(step)
    set_rates(optimizer, rates)
    model.train()
    batch = batches(step, generator)  # the global batch, the same on every rank
    loss, parts = loss_fn(model, shard_batch(batch, run))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.clip is not None:
        torch.nn.utils.clip_grad_norm_(params, config.clip)
    optimizer.step()
    values = {"step": step, "loss": run.mean(loss), **{k: run.mean(torch.as_tensor(v)) for k, v in parts.items()},
              "lr": rates.lr}
    if on_step is not None:
        on_step(StepEnd(step=step, model=model, batch=batch, metrics=values, generator=generator, run=run))
    return values


def _save_due(options: RunOptions, done: int, steps: int) -> bool:
    """Checkpoint every ``--save-every`` steps, at ``--stop-after``, and at the end of a run that saves periodically."""
    return options.save_due(done, steps) or (options.save_every is not None and done == steps)


def _progress(config: FitConfig, run: Run, first: int, last: int):
    """A tqdm bar on rank 0 when asked (default: when stderr is a terminal), else None."""
    show = config.progress if config.progress is not None else sys.stderr.isatty()
    if not (show and run.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=last, initial=first, unit="step", dynamic_ncols=True)


def _report(config: FitConfig, step: int, values: dict[str, float], bar, start: float) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", refresh=False)
    if step % config.log_every == 0 or step == config.steps - 1:
        shown = " ".join(f"{k} {v:.4f}" for k, v in values.items() if k not in ("step", "lr"))
        log.info("step %d %s lr %.2e %.0fs", step, shown, values["lr"], time.perf_counter() - start)


__all__ = ["BatchSource", "FitConfig", "FitResult", "LossFn", "Stateful", "StepEnd", "fit", "make_optimizer",
           "set_rates", "shard_batch"]
