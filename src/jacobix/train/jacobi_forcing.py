"""Jacobi Forcing (arXiv 2512.14681): noise-conditioned consistency training on packed sequences.

CLLM's successor. Trajectories are the model's own (block-mode greedy Jacobi,
:mod:`jacobix.train.trajectories`); what changes is how they are trained:

- **Noise schedule.** The noise of a Jacobi state is the share of its block still to be fixed,
  ``(n - first mismatch with the fixed point) / n``. Block ``j`` of a response is trained at the
  state nearest the level ``linspace(0, 1, w)[j mod w]``: a cyclic easy-to-hard ramp (``w`` = the
  ramp length, ``n / 2`` by default), so that no target is far from what the model already knows.
  jacobix starts each packed sequence's ramp at a random level by default (``ramp_start``): with
  the paper's start at 0, a response of few blocks never trains its first block, the one decoding
  starts from scratch, at high noise.
- **Packing.** One sequence holds the context and, per block, the noisy state ``k_j`` and its fixed
  point ``l_j``: ``[context | k_0 | l_0 | k_1 | l_1 | ...]``. ``k_j`` and ``l_j`` share positions;
  ``k_j`` sees the context, every earlier noisy block and itself causally, ``l_j`` the context,
  every earlier clean block and itself causally (one visibility mask, a tree: jacobix's Llama takes
  it as ``tree=``). One forward gives the student's logits (on the noisy blocks, whose earlier
  blocks are as unfinished as in multiblock decoding) and the target's (on the clean ones).
- **Loss.** ``ar_weight`` x cross-entropy on the clean stream (the context after the prompt and the
  clean blocks; targets are the model's own fixed points, never prompt tokens: the authors' code
  trains on the prompt) plus ``consistency_weight`` x KL(detached clean || noisy) at every noisy
  slot from the block's first mismatch to its end (KL has soft cross-entropy's gradient). With
  ``ar_target="teacher"`` the clean stream's term is instead KL(frozen teacher || model) over the
  whole next-token distribution: hard targets on greedy text sharpen a model whose distribution
  matters (on the Shakespeare model they raised the validation loss from 1.47 to 3.69 nats/char
  while keeping its greedy text).

Worked layout (context ``a b``, blocks of 2, fixed points ``c d | e f``, noisy states ``c X | Y Z``)::

    packed     a  b  c  X  c  d  Y  Z  e  f
    position   0  1  2  3  2  3  4  5  4  5
    stream     .  .  k0 k0 l0 l0 k1 k1 l1 l1
    l1's 'e' sees a b c d e; k1's 'Z' sees a b c X Y Z
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from jacobix.train import distributed
from jacobix.train.cllm import TrainLog
from jacobix.train.consistency import ar_loss, consistency_loss
from jacobix.train.loop import FitConfig, fit
from jacobix.train.losses import IGNORE
from jacobix.train.schedule import WarmupCosine
from jacobix.train.trajectories import Trajectories


@dataclass(frozen=True, kw_only=True)
class ForcingConfig:
    """Training options of :func:`step_losses` and the batch sampler.

    Attributes:
        steps: optimizer steps.
        batch_size: packed sequences per step.
        blocks: most blocks per packed sequence (a longer response is cut into windows of blocks;
            the ramp index stays the block's index in its response).
        ramp: the noise ramp's length ``w`` (None: half the block size, the paper's choice).
        ramp_start: "zero" (the paper: a response's first block at noise 0, every ``w``-th again) or
            "random" (each packed sequence starts the ramp at a random level, so every block index,
            the first included, is trained at every noise level; for responses of few blocks, whose
            first block is the one decoding starts from scratch).
        lr, warmup, weight_decay: AdamW with linear warm-up and cosine decay.
        ar_weight: weight of the clean stream's term (the paper: 10).
        ar_target: "fixed-point" (the paper: cross-entropy on the model's own greedy fixed points)
            or "teacher" (KL to the frozen teacher's distributions at the same slots; keeps the
            model's whole distribution, not only its greedy text).
        consistency_weight: weight of the noisy-to-clean KL (the paper: 1, over blocks per sequence).
        seed: seed of batch sampling.
    """

    steps: int = 1000
    batch_size: int = 16
    blocks: int = 8
    ramp: int | None = None
    ramp_start: str = "random"
    lr: float = 3e-4
    warmup: int = 30
    weight_decay: float = 0.0
    ar_weight: float = 10.0
    ar_target: str = "fixed-point"
    consistency_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.blocks) < 1 or self.warmup < 0 or not 0 < self.lr < math.inf:
            raise ValueError(f"ForcingConfig needs steps, batch_size, blocks >= 1, warmup >= 0 and lr > 0, got {self}")
        if self.ar_target not in ("fixed-point", "teacher"):
            raise ValueError(f"ForcingConfig.ar_target must be 'fixed-point' or 'teacher', got {self.ar_target!r}")
        if self.ramp_start not in ("zero", "random"):
            raise ValueError(f"ForcingConfig.ramp_start must be 'zero' or 'random', got {self.ramp_start!r}")
        if self.ramp is not None and self.ramp < 1:
            raise ValueError(f"ForcingConfig.ramp must be >= 1 blocks (or None for half the block size), got {self.ramp}")
        weights = (self.ar_weight, self.consistency_weight)
        if not all(0 <= w < math.inf for w in weights) or sum(weights) == 0:
            raise ValueError(f"ForcingConfig loss weights must be >= 0 and not both 0, got {weights}")


FORCING_HELP = {
    "steps": "optimizer steps per round", "batch_size": "packed sequences per step, global (all processes)",
    "blocks": "most blocks per packed sequence", "ramp": "noise ramp length in blocks (default: half the block size)",
    "ramp_start": "where a packed sequence starts the ramp: zero (the paper) or random (every block at every level)",
    "lr": "peak learning rate (linear warm-up, cosine decay)", "warmup": "warm-up steps",
    "weight_decay": "AdamW weight decay", "ar_weight": "weight of the clean stream's term",
    "ar_target": "the clean stream's target: fixed-point (the paper: the model's own greedy text) or teacher (KL to "
                 "the frozen teacher's distributions, for models whose whole distribution matters)",
    "consistency_weight": "weight of the noisy-to-clean consistency loss", "seed": "seed of the batch sampling",
}


def noise(states: Tensor, fixed: Tensor, length: int) -> Tensor:
    """(J,) the noise of each state: the share of the block's ``length`` tokens from its first mismatch on.

    Example: fixed ``a b c d``, state ``a b X d``: first mismatch at slot 2, noise (4 - 2) / 4 = 0.5.
    """
    differs = states[:, :length] != fixed[None, :length]  # (J, len)
    first = torch.where(differs.any(1), differs.long().argmax(1), length)  # (J,)
    return (length - first).float() / length


def ramp_level(index: int, ramp: int, start: int = 0) -> float:
    """The noise level block ``index`` of a response aims at: ``linspace(0, 1, ramp)[(index + start) mod ramp]``."""
    return 0.0 if ramp == 1 else ((index + start) % ramp) / (ramp - 1)


def pick_state(states: Tensor, fixed: Tensor, length: int, level: float) -> int:
    """Index of the state whose noise is nearest ``level`` (the earliest of equals)."""
    return int((noise(states, fixed, length) - level).abs().argmin())


@dataclass(frozen=True)
class Packed:
    """A batch of packed sequences (right-padded).

    Attributes:
        tokens, positions: (B, L) the packed tokens and their positions.
        visible: (B, L, L) bool, token i sees token j.
        targets: (B, L) the clean stream's next token at each of its slots, else ``IGNORE``.
        student, teacher: (B, M) packed slots of each noisy prediction and of its clean counterpart.
        trained: (B, M) the predictions the consistency loss trains (from a block's first mismatch).
    """

    tokens: Tensor
    positions: Tensor
    visible: Tensor
    targets: Tensor
    student: Tensor
    teacher: Tensor
    trained: Tensor


def pack(prompt_length: int, context: Tensor, noisy: list[Tensor], clean: list[Tensor]) -> dict[str, Tensor]:
    """One packed sequence: ``context``, then each noisy block and its clean block (see the module docstring).

    Args:
        prompt_length: prompt tokens at the start of ``context`` (no loss predicts them);
            ``len(context)`` when the context is all text before a window of blocks that starts later.
        context: (C,) tokens before the first block.
        noisy, clean: per block, (n_j,) a Jacobi state and its fixed point (``n_j`` valid tokens).
    Returns:
        the fields of :class:`Packed` for one row, unpadded.
    """
    if len(noisy) != len(clean) or not clean:
        raise ValueError(f"pack needs one noisy state per clean block and at least one block, got {len(noisy)} and {len(clean)}")
    c = len(context)
    total = c + 2 * sum(len(b) for b in clean)
    tokens = torch.cat([context, *[t for pair in zip(noisy, clean) for t in pair]])
    positions = torch.empty(total, dtype=torch.long)
    visible = torch.zeros(total, total, dtype=torch.bool)
    targets = torch.full((total,), IGNORE, dtype=torch.long)
    visible[:c, :c] = torch.ones(c, c, dtype=torch.bool).tril()
    positions[:c] = torch.arange(c)
    clean_stream = torch.cat([context, *clean])  # the text, for the clean stream's targets
    targets[max(prompt_length - 1, 0) : c] = clean_stream[max(prompt_length, 1) : c + 1]
    student, teacher, trained = [], [], []
    seen_noisy, seen_clean, at, pos = [], [], c, c
    for j, (k, l) in enumerate(zip(noisy, clean)):
        n = len(l)
        if len(k) != n:
            raise ValueError(f"block {j}: noisy state has {len(k)} tokens, its fixed point {n}")
        for start, seen in ((at, seen_noisy), (at + n, seen_clean)):
            block = slice(start, start + n)
            positions[block] = torch.arange(pos, pos + n)
            visible[block, :c] = True
            for earlier in seen:
                visible[block, earlier] = True
            visible[block, block] = torch.ones(n, n, dtype=torch.bool).tril()
        following = clean[j + 1][:1] if j + 1 < len(clean) else l.new_empty(0)
        targets[at + n : at + 2 * n][: n - 1 + len(following)] = torch.cat([l[1:], following])
        mismatch = (k != l).nonzero()
        first = int(mismatch[0]) if len(mismatch) else n
        student.append(torch.arange(at, at + n))
        teacher.append(torch.arange(at + n, at + 2 * n))
        trained.append(torch.arange(n) >= first)
        seen_noisy.append(slice(at, at + n))
        seen_clean.append(slice(at + n, at + 2 * n))
        at, pos = at + 2 * n, pos + n
    return {"tokens": tokens, "positions": positions, "visible": visible, "targets": targets,
            "student": torch.cat(student), "teacher": torch.cat(teacher), "trained": torch.cat(trained)}


def collate(rows: list[dict[str, Tensor]]) -> Packed:
    """Right-pad packed rows into a :class:`Packed` (a pad slot sees only itself; no loss reads it)."""
    length = max(len(r["tokens"]) for r in rows)
    predictions = max(len(r["student"]) for r in rows)
    b = len(rows)
    out = Packed(tokens=torch.zeros(b, length, dtype=torch.long), positions=torch.zeros(b, length, dtype=torch.long),
                 visible=torch.eye(length, dtype=torch.bool).repeat(b, 1, 1),
                 targets=torch.full((b, length), IGNORE, dtype=torch.long),
                 student=torch.zeros(b, predictions, dtype=torch.long), teacher=torch.zeros(b, predictions, dtype=torch.long),
                 trained=torch.zeros(b, predictions, dtype=torch.bool))
    for i, row in enumerate(rows):
        size, m = len(row["tokens"]), len(row["student"])
        for name in ("tokens", "positions", "targets"):
            getattr(out, name)[i, :size] = row[name]
        out.visible[i, :size, :size] = row["visible"]
        for name in ("student", "teacher", "trained"):
            getattr(out, name)[i, :m] = row[name]
    return out


def blocks_by_response(data: Trajectories) -> list[list[int]]:
    """The blocks of each response, in order (responses with no block left out)."""
    order = sorted(range(len(data.block_prompt)), key=lambda b: (int(data.block_prompt[b]), int(data.block_start[b])))
    out: dict[int, list[int]] = {}
    for block in order:
        out.setdefault(int(data.block_prompt[block]), []).append(block)
    return list(out.values())


def check_noisy(data: Trajectories) -> None:
    """Refuse trajectories with no noisy state at all (every block started at its fixed point): nothing to train."""
    for block in range(len(data.block_prompt)):
        length = int(data.block_length[block])
        if bool((noise(data.states_of(block), data.fixed_points[block], length) > 0).any()):
            return
    raise ValueError("every block of these trajectories starts at its fixed point (no state is noisy): there is nothing "
                     "to train; collect with a larger block size or from other prompts")


def sample_batch(data: Trajectories, responses: list[list[int]], config: ForcingConfig,
                 generator: torch.Generator) -> Packed:
    """``batch_size`` packed sequences: a random response each, a random window of up to ``blocks``
    of its blocks, each block at the state its ramp level picks."""
    ramp = config.ramp or max(data.block_size // 2, 1)
    rows = []
    for r in torch.randint(len(responses), (config.batch_size,), generator=generator).tolist():
        blocks = responses[r]
        first = int(torch.randint(max(len(blocks) - config.blocks, 0) + 1, (1,), generator=generator))
        start = int(torch.randint(ramp, (1,), generator=generator)) if config.ramp_start == "random" else 0
        window = blocks[first : first + config.blocks]
        noisy, clean = [], []
        for index, block in enumerate(window, start=first):
            length = int(data.block_length[block])
            states, fixed = data.states_of(block), data.fixed_points[block]
            noisy.append(states[pick_state(states, fixed, length, ramp_level(index, ramp, start)), :length])
            clean.append(fixed[:length])
        p = int(data.block_prompt[window[0]])
        prompt_length = int(data.prompt_length[p])
        rows.append(pack(prompt_length, data.context(window[0]), noisy, clean))
    return collate(rows)


def step_losses(forward, batch: Packed, share=None, teacher=None) -> dict[str, Tensor]:
    """The clean stream's cross-entropy and the noisy-to-clean consistency of one packed batch.

    Args:
        forward: ``forward(tokens (B, L), positions (B, L), visible (B, L, L)) -> logits (B, L, V)``.
        batch: packed sequences.
        share: turns a rank's count of trained positions into its share of the global count (see
            :func:`jacobix.train.cllm.step_losses`); None on one process.
        teacher: a frozen model's forward of the same signature: the clean stream's term is then
            KL(teacher || model) at its slots instead of cross-entropy on the fixed points.
    """
    share = share or (lambda count: count)
    logits = forward(batch.tokens, batch.positions, batch.visible)  # (B, L, V)
    clean = batch.targets != IGNORE  # (B, L)
    pick = lambda index: logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))  # noqa: E731
    if teacher is not None:
        with torch.no_grad():
            target = teacher(batch.tokens, batch.positions, batch.visible)  # (B, L, V)
        ar = consistency_loss(logits, target, clean, count=share(clean.sum()))
    else:
        ar = ar_loss(logits, batch.targets.clamp_min(0), clean, label_smoothing=0.0, count=share(clean.sum()))
    return {
        "ar": ar,
        "consistency": consistency_loss(pick(batch.student), pick(batch.teacher), batch.trained,
                                        count=share(batch.trained.sum())),
    }


def train_forcing(model: torch.nn.Module, forward, data: Trajectories, config: ForcingConfig = ForcingConfig(), *,
                  run: distributed.Run | None = None, options: distributed.RunOptions = distributed.RunOptions(),
                  out: Path | None = None, log_every: int = 50, teacher=None) -> TrainLog:
    """Train ``model`` in place on ``data`` with :func:`jacobix.train.loop.fit` (alone or as one rank of a torchrun job).

    Args:
        model: the module whose parameters are trained, through :func:`jacobix.train.distributed.wrap`
            when ``run`` is distributed.
        forward: :func:`packed_forward` of the (wrapped) model.
        data: the model's own trajectories (:func:`jacobix.train.trajectories.collect`).
        config: steps, batch, schedule, weights.
        run, options, out, log_every: as :func:`jacobix.train.cllm.train_cllm`.
        teacher: with ``config.ar_target == "teacher"``, :func:`packed_forward` of the frozen teacher.
    Returns:
        per-step losses (global-batch means) and the wall time.
    """
    if (teacher is None) != (config.ar_target == "fixed-point"):
        raise ValueError("ForcingConfig.ar_target='teacher' needs the teacher's packed forward (and only it does)")
    check_noisy(data)
    run = run or distributed.Run()
    responses = blocks_by_response(data)
    weights = {"ar": config.ar_weight, "consistency": config.consistency_weight}
    share = (lambda count: run.sum(count) / run.world_size) if run.distributed else None

    def loss_fn(module: torch.nn.Module, batch: Packed) -> tuple[Tensor, dict[str, Tensor]]:
        losses = step_losses(forward, batch, share, teacher)
        total = sum(weights[k] * v for k, v in losses.items() if weights[k])
        return total, {**{k: v.detach() for k, v in losses.items()}, "total": total.detach()}

    fit_config = FitConfig(schedule=WarmupCosine(peak=config.lr, steps=config.steps, warmup=config.warmup),
                           weight_decay=config.weight_decay, seed=config.seed, log_every=log_every)
    result = fit(model, loss_fn, lambda step, g: sample_batch(data, responses, config, g), fit_config, run=run,
                 options=options, out=out)
    model.eval()
    return TrainLog(steps=[{k: round(row[k], 5) for k in (*weights, "total")} for row in result.history],
                    seconds=result.seconds)


def packed_forward(lm) -> callable:
    """``forward(tokens, positions, visible) -> logits`` through a jacobix CausalLM that takes a visibility
    mask as ``tree=`` (jacobix's Llama, the transformers adapter)."""
    call = lm if isinstance(lm, torch.nn.Module) else lm.forward  # a module's __call__ runs DDP/FSDP2 hooks

    def forward(tokens: Tensor, positions: Tensor, visible: Tensor) -> Tensor:
        return call(tokens, positions, tree=visible[:, None])

    return forward


__all__ = ["FORCING_HELP", "ForcingConfig", "Packed", "blocks_by_response", "check_noisy", "collate", "noise", "pack",
           "packed_forward", "pick_state", "ramp_level", "sample_batch", "step_losses", "train_forcing"]
