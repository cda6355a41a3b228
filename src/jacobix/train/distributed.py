"""One process or many: what a trainer needs to run unchanged under ``torchrun``.

A recipe calls ``setup`` and ``wrap``; :func:`jacobix.train.loop.fit` makes the other calls, in this order::

    run = distributed.setup()                                   # rank, world size, device; joins torchrun's group
    model = distributed.wrap(model, run, fsdp=options.fsdp)     # DDP or FSDP2; as it is on 1 process
    optimizer = ...(model.parameters())                         # after wrap (FSDP2 shards the parameters)
    first = distributed.load_checkpoint(options.resume, run, model=model, optimizer=optimizer, generator=g)
    metrics = distributed.Metrics(out / distributed.METRICS, run, first)
    for step in range(first, options.last_step(steps)):
        x, y = run.shard(*global_batch(g))                      # this rank's rows of the SAME global batch
        ...loss.backward(); optimizer.step()
        metrics.log(step, loss=run.mean(loss))                  # the global-batch loss; rank 0 writes
        if options.save_due(step + 1, steps):
            distributed.save_checkpoint(out / distributed.CHECKPOINT, run, model=model, optimizer=optimizer,
                                        step=step + 1, generator=g)
    weights = distributed.full_state_dict(model)                # every rank (gathers FSDP2 shards)
    if run.is_main: ...save a plain model built from weights
    run.close()

``options`` is a :class:`RunOptions` (``add_distributed_arguments`` + ``RunOptions.from_args``
give every trainer the same ``--resume``, ``--save-every``, ``--stop-after`` and ``--fsdp``).

Every rank draws the whole global batch from the same seeded generator and keeps its own
contiguous slice, so N processes see exactly the rows one process sees; DDP averages the
gradients of equal slices, which is the gradient of the global mean loss. Loss curves then agree
with a 1-process run up to float summation order. Only rank 0 writes checkpoints and logs;
every rank reads a checkpoint when resuming (a shared file system across nodes).
"""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class Run:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 on a single process).
        world_size: number of processes (1 on a single process).
        local_rank: rank on this node (selects the GPU).
        device: where this rank's model and batches live.
        backend: "gloo" or "nccl" when a process group is in use, else None.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on the rank that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def shard(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """This rank's contiguous slice (dim 0) of each global-batch tensor, moved to ``device``.

        Raises:
            ValueError: a global batch that does not split evenly over the ranks (uneven slices
                would weight rows differently from a 1-process run).
        """
        out = []
        for tensor in tensors:
            rows = tensor.shape[0]
            if rows % self.world_size:
                raise ValueError(f"a global batch of {rows} rows does not split over {self.world_size} processes; "
                                 f"use a batch size divisible by {self.world_size}")
            size = rows // self.world_size
            out.append(tensor[self.rank * size : (self.rank + 1) * size].to(self.device))  # (B / N, ...)
        return tuple(out)

    def mean(self, value: Tensor) -> float:
        """The mean of a scalar over ranks (the global-batch loss when slices are equal), as a float."""
        value = value.detach().to(torch.float64).reshape(())
        if self.distributed:
            value = value.to(self.device)
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value = value / self.world_size
        return float(value)

    def sum(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of a tensor over ranks (e.g. counts from each slice)."""
        if not self.distributed:
            return tensor
        total = tensor.detach().clone().to(self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(tensor.device)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (a no-op on a single process), after every rank got here: a rank
        that tears its group down while rank 0 still evaluates and saves can abort in gloo's threads."""
        if self.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def is_main_process() -> bool:
    """True unless torchrun started this process with a rank other than 0 (for logging set-up)."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(*, device: str | torch.device | None = None) -> Run:
    """Join the process group that ``torchrun`` describes in the environment, or run alone.

    Under torchrun (``WORLD_SIZE`` set) the backend is nccl when CUDA is available, else gloo,
    and each rank takes ``cuda:LOCAL_RANK``. Without torchrun nothing is initialised.

    Args:
        device: force a device (e.g. "cpu" to train on CPU on a GPU machine); default: as above.
    Returns:
        the :class:`Run`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    chosen = torch.device(f"cuda:{local_rank}") if cuda and device is None else torch.device(device or "cpu")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if "WORLD_SIZE" not in os.environ:
        return Run(device=chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=chosen if chosen.type == "cuda" else None)
    return Run(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen, backend=backend)


def wrap(model: nn.Module, run: Run, *, fsdp: bool = False) -> nn.Module:
    """Make ``model`` data-parallel over the ranks: DDP, or FSDP2 ``fully_shard`` with ``fsdp=True``.

    With FSDP2 every element of every ``nn.ModuleList`` (the transformer blocks) is sharded as
    one unit, then the root; create the optimizer AFTER this call (its parameters become sharded
    tensors). On a single process the model is returned as it is (moved to ``run.device``).
    """
    model = model.to(run.device)
    if not run.distributed:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        blocks = [block for module in model.modules() if isinstance(module, nn.ModuleList) for block in module]
        for block in blocks:
            fully_shard(block)
        return fully_shard(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (an FSDP2 model is its own module; see :func:`full_state_dict`)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's weights as plain CPU tensors, on every rank (gathers FSDP2 shards)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not _is_fsdp(model):
        return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    return {k: v.detach().cpu() for k, v in full.items()}


def save_checkpoint(path: str | Path, run: Run, *, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    generator: torch.Generator | None = None, extra: dict | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """Write everything needed to continue the run after ``step`` optimizer steps (rank 0 writes).

    Saved: model and optimizer state (gathered whole, so a run may resume on another number of
    processes), ``step``, the data generator's state, torch's global RNG state, the learning-rate
    ``scheduler``'s state when there is one, and ``extra``.
    The file is written beside its target and renamed over it, so a crash never leaves half a
    checkpoint. Every rank must call this (gathering is collective).
    """
    model_state, optim_state = _states(model, optimizer)
    if run.is_main:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        state = {"step": step, "model": model_state, "optimizer": optim_state, "world_size": run.world_size,
                 "generator": None if generator is None else generator.get_state(),
                 "torch_rng": torch.get_rng_state(), "extra": extra or {},
                 "scheduler": None if scheduler is None else scheduler.state_dict()}
        partial = target.with_name(target.name + ".partial")
        torch.save(state, partial)
        os.replace(partial, target)
    run.barrier()


def load_checkpoint(path: str | Path | None, run: Run, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> int:
    """Restore a :func:`save_checkpoint` file into the (wrapped) model, optimizer and generator.

    Args:
        path: the checkpoint, or None to start afresh.
        run: from :func:`setup`.
        model, optimizer: built as for a fresh run (after :func:`wrap`).
        generator: the data generator, restored to where the saved run left it.
        scheduler: a learning-rate scheduler to restore (trainers that set the rate per step need none).
    Returns:
        the step to continue from (0 without a checkpoint).
    """
    if path is None:
        return 0
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if _is_fsdp(model):
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, state["model"], options=options)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    else:
        try:
            unwrap(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            first = str(error).strip().splitlines()[0]
            raise ValueError(f"--resume {path}: saved by a run of another model or settings ({first})") from None
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def checkpoint_extra(path: str | Path | None) -> dict:
    """The ``extra`` dict saved with a checkpoint ({} without one): trainer state beyond the standard."""
    if path is None:
        return {}
    return torch.load(Path(path), map_location="cpu", weights_only=True).get("extra", {})


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch builds without distributed
        return False
    return isinstance(model, FSDPModule)


def _states(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict(), optimizer.state_dict()


def add_distributed_arguments(parser: argparse.ArgumentParser, *, save_every: bool = True) -> None:
    """``--resume``, ``--save-every``, ``--stop-after`` and ``--fsdp``, the same in every trainer
    (``save_every=False`` leaves out ``--save-every`` for a recipe that gives it another meaning)."""
    parser.add_argument("--resume", type=Path, default=None, help=f"continue the run saved in this {CHECKPOINT}")
    if save_every:
        parser.add_argument("--save-every", type=int, default=None,
                            help=f"write OUT/{CHECKPOINT} every N steps (model, optimizer, step, RNG states)")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop after this many steps, as if interrupted (the schedule still follows --steps)")
    parser.add_argument("--fsdp", action="store_true", help="under torchrun: shard the model with FSDP2 instead of DDP")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Checkpointing and sharding options shared by the trainers.

    Attributes:
        resume: a :func:`save_checkpoint` file to continue from.
        save_every: write a checkpoint every this many steps (None: only with ``stop_after``).
        stop_after: stop after this many steps, as if interrupted, writing a checkpoint
            (the learning-rate schedule still follows the full number of steps).
        fsdp: shard the model with FSDP2 instead of DDP (under torchrun).
    """

    resume: Path | None = None
    save_every: int | None = None
    stop_after: int | None = None
    fsdp: bool = False

    def __post_init__(self) -> None:
        for name in ("save_every", "stop_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.resume is not None and not Path(self.resume).is_file():
            raise FileNotFoundError(f"--resume {self.resume}: no such checkpoint file")
        if self.resume is not None:
            check_checkpoint_file(self.resume)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        return cls(resume=args.resume, save_every=args.save_every, stop_after=args.stop_after, fsdp=args.fsdp)

    def last_step(self, steps: int) -> int:
        """Steps to run to (exclusive): ``stop_after`` if given, else ``steps``."""
        if self.stop_after is not None and self.stop_after > steps:
            raise ValueError(f"--stop-after {self.stop_after} is beyond --steps {steps}")
        return steps if self.stop_after is None else self.stop_after

    def save_due(self, done: int, steps: int) -> bool:
        """Whether to checkpoint after ``done`` steps: every ``save_every``, and at an early stop."""
        every = self.save_every is not None and done % self.save_every == 0
        return every or (self.stop_after is not None and done == self.last_step(steps))


def check_checkpoint_file(path: str | Path) -> None:
    """Refuse a :func:`save_checkpoint` file that is truncated or damaged (its zip records and CRCs are read,
    nothing is unpickled), naming it, before a resumed run starts."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"--resume {path}: not a readable checkpoint ({error}); resume from an earlier one or start afresh") from None
    if damaged is not None:
        raise ValueError(f"--resume {path}: damaged ({damaged} fails its check); resume from an earlier one or start afresh")


class Metrics:
    """Rank 0's log of per-step values, one JSON object a line (``{"step": 3, "loss": 2.71}``).

    Resuming at ``start`` keeps the lines of earlier steps and drops later ones, so the file
    always reads as one run.
    """

    def __init__(self, path: str | Path, run: Run, start: int = 0) -> None:
        self.path, self.enabled = Path(path), run.is_main
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if start > 0 and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] < start]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, **values: float) -> None:
        if self.enabled:
            with self.path.open("a") as file:
                file.write(json.dumps({"step": step, **values}) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """The lines of a :class:`Metrics` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


__all__ = ["CHECKPOINT", "METRICS", "Metrics", "Run", "RunOptions", "add_distributed_arguments", "checkpoint_extra",
           "full_state_dict", "is_main_process", "load_checkpoint", "read_metrics", "save_checkpoint", "setup", "unwrap",
           "wrap"]
