"""Train the bundled class-conditional AR transformer over VQ token grids of Fashion-MNIST.

Needs the tokenizer in ``assets/fmnist-vq`` (``jacobix train vq``). Reproduce
``src/jacobix/assets/fmnist-ar`` (about 15 minutes on one busy CPU thread)::

    jacobix train image-ar                    # writes ./jacobix-train/fmnist-ar
    jacobix train image-ar --replace-bundled  # replaces the bundled checkpoint

Sequences are ``[class token] + 196 codes``; the class token is replaced by the null token with
probability ``label_dropout`` so that one model serves classifier-free guidance. Besides the
model, the script writes ``drafts.safetensors``: code frequencies per (class, position) and per
code above, used by the draft rules of :mod:`jacobix.images.proposers` (no data at generation time).
Under ``torchrun --nproc_per_node N -m jacobix.train.image_ar`` the global batch is split over the
processes (:mod:`jacobix.train.distributed`).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from jacobix.eval.datasets import load_fashion_mnist
from jacobix.images.model import ImageVocab
from jacobix.images.vq import load_vq
from jacobix.models.llama import Llama, LlamaConfig, load_llama, save_llama
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.distributed import RunOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ImageARTrainConfig:
    """Optimisation settings of :func:`train`."""

    steps: int = 900
    batch_size: int = 16
    lr: float = 2e-3
    save_every: int = 300
    warmup: int = 50
    weight_decay: float = 0.05
    label_dropout: float = 0.1
    seed: int = 0
    threads: int = 1
    dim: int = 128
    num_layers: int = 4

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.warmup, self.save_every, self.threads, self.dim, self.num_layers) < 1 or self.lr <= 0:
            raise ValueError("ImageARTrainConfig needs positive steps, batch_size, warmup, threads, dim, num_layers, lr")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")


def train(
    out_dir: str | Path,
    config: ImageARTrainConfig = ImageARTrainConfig(),
    *,
    vq_dir: str | Path | None = None,
    init_from: str | Path | None = None,
    options: RunOptions = RunOptions(),
) -> Path:
    """Tokenize the training split, train the transformer, save model and draft tables to ``out_dir``.

    Args:
        out_dir: checkpoint folder (created); also ``metrics.jsonl`` and, when asked, ``checkpoint.pt``.
        config: optimisation settings and model size.
        vq_dir: tokenizer folder; default: the bundled ``fmnist-vq``.
        init_from: continue from the weights in this folder (a second run with a fresh schedule).
        options: resume, checkpoint frequency, early stop, FSDP (:class:`RunOptions`).
    Returns:
        ``out_dir``.
    """
    run = distributed.setup()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    tokenizer = load_vq(vq_dir)
    vocab = ImageVocab(num_codes=tokenizer.config.codebook_size, num_classes=10, grid=tokenizer.config.grid)
    codes, labels = tokenize_split("train", tokenizer)  # (N, 196), (N,)
    model_config = LlamaConfig(vocab_size=vocab.vocab_size, dim=config.dim, num_layers=config.num_layers, num_heads=4,
                               num_kv_heads=2, hidden_dim=3 * config.dim, max_seq_len=512)
    model = Llama(model_config)
    if init_from is not None:
        model.load_state_dict(load_llama(init_from)[0].state_dict())
    model = distributed.wrap(model, run, fsdp=options.fsdp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(config.seed)
    first = distributed.load_checkpoint(options.resume, run, model=model, optimizer=optimizer, generator=generator)
    metrics = distributed.Metrics(Path(out_dir) / distributed.METRICS, run, first)
    image_meta = {**asdict(vocab), "vq": Path(vq_dir).name if vq_dir else "fmnist-vq"}
    if run.is_main:
        save_draft_tables(out_dir, codes, labels, vocab)
    start, last = time.perf_counter(), options.last_step(config.steps)
    for step in range(first, last):
        lr = config.lr * min(1.0, (step + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = torch.randint(len(codes), (config.batch_size,), generator=generator)
        inputs, targets = class_sequences(codes[batch], labels[batch], vocab, config.label_dropout, generator)  # global batch
        inputs, targets = run.shard(inputs, targets)  # this rank's rows
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        global_loss = run.mean(loss)
        metrics.log(step, loss=global_loss, lr=lr)
        if step % 50 == 0 or step == config.steps - 1:
            log.info("step %d loss %.3f lr %.2e %.0fs", step, global_loss, lr, time.perf_counter() - start)
        if step % config.save_every == config.save_every - 1:  # partial checkpoints, overwritten at the end
            _save_plain(model, model_config, run, out_dir, {"image": image_meta, "partial_step": step + 1})
        if options.save_due(step + 1, config.steps):
            distributed.save_checkpoint(Path(out_dir) / distributed.CHECKPOINT, run, model=model, optimizer=optimizer,
                                        step=step + 1, generator=generator)
    if last == config.steps:
        history = [*(load_llama(init_from)[1].get("train_runs", []) if init_from else []), asdict(config)]
        _save_final(model, model_config, run, out_dir, tokenizer, vocab, {"image": image_meta, "train_runs": history})
    run.close()
    return Path(out_dir)


def _save_final(model: torch.nn.Module, model_config: LlamaConfig, run: distributed.Run, out_dir: str | Path,
                tokenizer, vocab: ImageVocab, extra: dict) -> None:
    """Gather the weights, measure the test loss and save the model (rank 0)."""
    weights = distributed.full_state_dict(model)
    if not run.is_main:
        return
    final = Llama(model_config)
    final.load_state_dict(weights)
    test_codes, test_labels = tokenize_split("test", tokenizer)
    val_loss = evaluate(final.eval(), test_codes, test_labels, vocab)
    log.info("test loss %.4f nats/token", val_loss)
    save_llama(final, out_dir, extra={**extra, "test_loss": round(val_loss, 4)})


def _save_plain(model: torch.nn.Module, model_config: LlamaConfig, run: distributed.Run, out_dir: str | Path,
                extra: dict) -> None:
    """Save the (gathered) weights as an ordinary jacobix checkpoint from rank 0."""
    weights = distributed.full_state_dict(model)
    if run.is_main:
        plain = Llama(model_config)
        plain.load_state_dict(weights)
        save_llama(plain, out_dir, extra=extra)


def tokenize_split(split: str, tokenizer) -> tuple[Tensor, Tensor]:
    """A Fashion-MNIST split as VQ codes (N, 196) and labels (N,)."""
    images, labels = load_fashion_mnist(split)
    return tokenizer.encode(torch.tensor(images)).flatten(1), torch.tensor(labels)  # (N, 196), (N,)


def class_sequences(codes: Tensor, labels: Tensor, vocab: ImageVocab, dropout: float, generator: torch.Generator):
    """Inputs ``[class] + codes[:-1]`` (B, 196) and targets ``codes`` (B, 196)."""
    prompt = vocab.class_tokens(labels)  # (B,)
    drop = torch.rand(len(labels), generator=generator) < dropout
    prompt = torch.where(drop, vocab.null_token, prompt)
    return torch.cat([prompt[:, None], codes[:, :-1]], dim=1), codes


@torch.no_grad()
def evaluate(model: Llama, codes: Tensor, labels: Tensor, vocab: ImageVocab, n: int = 1000) -> float:
    """Mean conditional cross-entropy (nats per code) on the first ``n`` sequences."""
    inputs, targets = class_sequences(codes[:n], labels[:n], vocab, 0.0, torch.Generator())
    losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in zip(inputs.split(100), targets.split(100))]
    return sum(losses) / len(losses)


def save_draft_tables(out_dir: str | Path, codes: Tensor, labels: Tensor, vocab: ImageVocab) -> None:
    """Write smoothed code frequencies used as draft distributions (``drafts.safetensors``).

    ``position_prior`` (num_classes, 196, num_codes): frequency of each code at each grid cell per
    class. ``above_transition`` (num_codes, num_codes): frequency of a code given the code above.
    """
    from safetensors.torch import save_file

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    k, cells = vocab.num_codes, vocab.image_tokens
    prior = torch.zeros(vocab.num_classes, cells, k, dtype=torch.float64)
    prior.index_put_((labels[:, None].expand_as(codes), torch.arange(cells).expand_as(codes), codes),
                     torch.ones(codes.shape, dtype=torch.float64), accumulate=True)
    above = torch.zeros(k, k, dtype=torch.float64)
    up, down = codes[:, : -vocab.grid], codes[:, vocab.grid :]
    above.index_put_((up.flatten(), down.flatten()), torch.ones(up.numel(), dtype=torch.float64), accumulate=True)
    tables = {
        "position_prior": _normalize(prior + 0.01).to(torch.float16),
        "above_transition": _normalize(above + 0.01).to(torch.float16),
    }
    save_file({name: t.contiguous() for name, t in tables.items()}, str(Path(out_dir) / "drafts.safetensors"))


def _normalize(counts: Tensor) -> Tensor:
    return counts / counts.sum(-1, keepdim=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``out`` is resolved (see :func:`jacobix.train.output_folder`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser, "fmnist-ar")
    parser.add_argument("--vq", default=None, help="tokenizer folder (default: bundled fmnist-vq)")
    parser.add_argument("--steps", type=int, default=ImageARTrainConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=ImageARTrainConfig.lr)
    parser.add_argument("--init-from", default=None, help="continue from the weights in this folder")
    parser.add_argument("--batch-size", type=int, default=ImageARTrainConfig.batch_size, help="global batch (all processes)")
    parser.add_argument("--dim", type=int, default=ImageARTrainConfig.dim, help="model width")
    parser.add_argument("--layers", type=int, default=ImageARTrainConfig.num_layers, help="transformer layers")
    distributed.add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    args.out = output_folder(args, "fmnist-ar")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if distributed.is_main_process() else logging.WARNING,
                        format="%(asctime)s %(message)s")
    config = ImageARTrainConfig(steps=args.steps, seed=args.seed, lr=args.lr, batch_size=args.batch_size, dim=args.dim,
                                num_layers=args.layers)
    train(args.out, config, vq_dir=args.vq, init_from=args.init_from, options=RunOptions.from_args(args))


if __name__ == "__main__":
    main()
