"""PCCoT (issue #16): latent thoughts on the engine, against an independent cache-free reference;
padding, gradients, the CODI loss on hand-built cases, the task generator and bad inputs."""

from __future__ import annotations

import random

import pytest
import torch

from jacobix.latent.arith import ANSWER_PROMPT, BOT, EOT, MAX_STEPS, PLACEHOLDER, TOKEN_ID, VOCAB, encode, evaluate_program, make_program, program_set
from jacobix.latent.model import LatentConfig, LatentReasoner, ReasonerConfig, load_reasoner, save_reasoner
from jacobix.latent.thoughts import pack_questions, read_answer, think
from jacobix.models.llama import LlamaConfig
from jacobix.train.recipes.pccot import IGNORE, distillation_loss, make_batch, take_rows, token_ce

C = 4


def reasoner(seed: int = 0, *, latents: int = C, passes: int = 2, max_seq_len: int = 64, dtype=torch.float64) -> LatentReasoner:
    torch.manual_seed(seed)
    llama = LlamaConfig(vocab_size=len(VOCAB), dim=32, num_layers=2, num_heads=4, num_kv_heads=2, hidden_dim=64, max_seq_len=max_seq_len)
    latent = LatentConfig(latents=latents, passes=passes, bot=BOT, eot=EOT, placeholder=PLACEHOLDER, prompt=ANSWER_PROMPT)
    return LatentReasoner(ReasonerConfig(llama=llama, latent=latent)).to(dtype).eval()


def questions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three right-padded questions of different lengths."""
    rows = [encode(p.question) for p in (make_program(s, random.Random(seed + s)) for s in (3, 1, 2))]
    lengths = torch.tensor([len(r) for r in rows])
    out = torch.zeros(3, int(lengths.max()), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out, lengths


@torch.no_grad()
def reference_latents(model: LatentReasoner, question: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CODI's sequential continuous CoT by whole-sequence recomputation (no cache, no engine):
    latent i is the projected last hidden state at the position before it. Returns the latents
    (c, dim) and the answer logits (V,)."""
    lm = model.lm
    sequence = lm.embed(torch.cat([question, torch.tensor([BOT])])[None])  # (1, q+1, dim)
    latents = []
    for _ in range(model.latent.latents):
        hidden = lm(None, embeds=sequence, return_hidden=True).hidden_states[-1]  # (1, L, dim)
        latents.append(model.project(hidden[:, -1:]))
        sequence = torch.cat([sequence, latents[-1]], 1)
    tail = lm.embed(torch.tensor([[EOT, *ANSWER_PROMPT]]))
    logits = lm(None, embeds=torch.cat([sequence, tail], 1))  # (1, L, V)
    return torch.cat(latents, 1)[0], logits[0, -1]


def test_T_equal_c_is_sequential_continuous_cot_in_float64():
    model = reasoner(1)
    q, lengths = questions()
    for method, passes in (("jacobi", C), ("sequential", None), ("exact", None), ("jacobi", C + 2)):
        thoughts = think(model, q, lengths, method=method, passes=passes)
        logits = read_answer(model, thoughts).logits
        for b in range(3):
            latents, answer_logits = reference_latents(model, q[b, : lengths[b]])
            torch.testing.assert_close(thoughts.latents[b], latents, rtol=0, atol=1e-11)
            torch.testing.assert_close(logits[b], answer_logits, rtol=0, atol=1e-11)
    assert think(model, q, lengths, method="jacobi", passes=C).stats.forward_passes == C
    assert think(model, q, lengths, method="sequential").stats.forward_passes == C


def test_after_t_passes_exactly_the_first_t_slots_are_sequential():
    model = reasoner(2)
    q, lengths = questions(5)
    latents, _ = reference_latents(model, q[0, : lengths[0]])
    for t in range(1, C):
        got = think(model, q[:1, : lengths[0]], lengths[:1], method="jacobi", passes=t)
        assert got.stats.forward_passes == t
        torch.testing.assert_close(got.latents[0, :t], latents[:t], rtol=0, atol=1e-11)
        assert (got.latents[0, t] - latents[t]).abs().max() > 1e-6  # slot t+1 still holds a guess


def test_left_and_right_padded_rows_equal_unbatched_rows():
    model = reasoner(3, dtype=torch.float32)
    q, lengths = questions(9)
    width = q.shape[1] + 2
    right = torch.zeros(3, width, dtype=torch.long)
    left = torch.full((3, width), TOKEN_ID["<pad>"])
    right_mask, left_mask = torch.zeros(3, width, dtype=torch.bool), torch.zeros(3, width, dtype=torch.bool)
    for b in range(3):
        n = int(lengths[b])
        right[b, :n], right_mask[b, :n] = q[b, :n], True
        left[b, width - n :], left_mask[b, width - n :] = q[b, :n], True
    for tokens, mask in ((right, right_mask), (left, left_mask)):
        packed, packed_lengths = pack_questions(tokens, mask)
        batch = think(model, packed, packed_lengths, passes=2)
        logits = read_answer(model, batch).logits
        for b in range(3):
            alone = think(model, q[b : b + 1, : lengths[b]], lengths[b : b + 1], passes=2)
            torch.testing.assert_close(batch.latents[b], alone.latents[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(logits[b], read_answer(model, alone).logits[0], rtol=1e-5, atol=1e-5)


def test_the_training_path_equals_the_engine_and_reaches_every_special_embedding():
    model = reasoner(4)
    q, lengths = questions(3)
    for method in ("jacobi", "sequential"):
        with torch.no_grad():
            engine = think(model, q, lengths, method=method, passes=2)
            engine_logits = read_answer(model, engine).logits
        trained = think(model, q, lengths, method=method, passes=2, differentiable=True)
        torch.testing.assert_close(trained.latents, engine.latents, rtol=0, atol=1e-12)
        torch.testing.assert_close(read_answer(model, trained).logits, engine_logits, rtol=0, atol=1e-12)
    model.zero_grad()
    read_answer(model, think(model, q, lengths, passes=2, differentiable=True)).logits.logsumexp(-1).sum().backward()
    grad = model.lm.tok_embeddings.weight.grad
    for token in (PLACEHOLDER, BOT, EOT, *ANSWER_PROMPT):
        assert grad[token].abs().sum() > 0, VOCAB[token]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projection.parameters())
    assert grad[TOKEN_ID["<eos>"]].abs().sum() == 0  # never read: the check can fail


def test_the_distillation_reads_the_answer_prompts_last_token():
    programs = program_set(3, 4, seed=1) + program_set(1, 2, seed=1)
    batch = make_batch(programs)
    prompt_end = batch.teacher[torch.arange(6), batch.anchor]
    assert prompt_end.tolist() == [ANSWER_PROMPT[-1]] * 6
    assert batch.teacher[torch.arange(6), batch.anchor + 1].tolist() == batch.answers.tolist()
    assert (batch.targets[torch.arange(6), batch.anchor] == batch.answers).all()  # the answer is predicted there
    # take_rows picks exactly that position: a hidden state marked only there gives the mark back
    hidden = torch.zeros(6, batch.teacher.shape[1], 3)
    hidden[torch.arange(6), batch.anchor] = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(take_rows(hidden, batch.anchor), torch.tensor([[1.0, 2.0, 3.0]] * 6))


def test_distillation_loss_on_a_hand_built_case():
    teacher = (torch.tensor([[0.0, 2.0], [2.0, 0.0]]),)  # std of [0, 2, 2, 0] = sqrt(4/3)
    student = (torch.tensor([[0.5, 2.0], [2.0, 3.0]]),)  # smooth-L1 terms: 0.125, 0, 0, 2.5 -> mean 0.65625
    expected = 0.65625 / (4.0 / 3.0) ** 0.5
    assert distillation_loss(student, teacher).item() == pytest.approx(expected)
    assert distillation_loss(teacher, teacher).item() == 0.0
    two = distillation_loss(student + teacher, teacher + teacher)  # mean over layers
    assert two.item() == pytest.approx(expected / 2)


def test_teacher_targets_cover_the_cot_and_answer_only():
    (program,) = program_set(3, 1, seed=2)
    batch = make_batch([program])
    q = len(encode(program.question))
    tokens = batch.teacher[0]
    assert (batch.targets[0, :q] == IGNORE).all()
    assert tokens[q] == BOT and batch.targets[0, q] == encode(program.cot)[0]
    logits = torch.full((1, tokens.numel(), len(VOCAB)), -30.0)
    valid = batch.targets[0] != IGNORE
    logits[0, valid, batch.targets[0, valid]] = 30.0
    assert token_ce(logits, batch.targets).item() < 1e-10


def test_the_generator_is_seeded_and_its_programs_evaluate_to_their_answers():
    assert program_set(5, 50, seed=3) == program_set(5, 50, seed=3)
    assert program_set(5, 50, seed=3) != program_set(5, 50, seed=4)
    for steps in range(1, MAX_STEPS + 1):
        for p in program_set(steps, 40, seed=steps):
            assert p.steps == steps and p.question.count(";") == steps + 1
            assert evaluate_program(p.question) == p.answer
            lines = p.question.split(";")
            for i, part in enumerate(filter(None, p.cot.split(";")), start=1):  # each CoT value is that step's result
                name, value = part.split("=")
                assert evaluate_program(";".join(lines[: i + 1]) + f";?{name}") == int(value)
            assert p.cot.count(";") == steps - 1  # the last step is dropped
    answers = [p.answer for p in program_set(4, 2000, seed=0)]
    assert max(answers.count(v) for v in range(23)) < 0.1 * len(answers)  # no answer dominates


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="passes"):
        LatentConfig(passes=0)
    with pytest.raises(ValueError, match="latents"):
        LatentConfig(latents=0)
    with pytest.raises(ValueError, match="steps"):
        make_program(MAX_STEPS + 1, random.Random(0))
    model = reasoner(5, max_seq_len=40)
    q, lengths = questions()
    with pytest.raises(ValueError, match="passes"):
        think(model, q, lengths, passes=0)
    with pytest.raises(ValueError, match="method"):
        think(model, q, lengths, method="parallel")
    long = torch.tensor([encode(make_program(8, random.Random(0)).question)])
    with pytest.raises(ValueError, match="max_seq_len"):
        think(model, long, torch.tensor([long.shape[1]]))


def test_checkpoint_round_trip(tmp_path):
    model = reasoner(6, dtype=torch.float32)
    save_reasoner(model, tmp_path / "m", extra={"note": 1})
    loaded, meta = load_reasoner(tmp_path / "m")
    assert meta["note"] == 1 and loaded.latent == model.latent
    q, lengths = questions()
    torch.testing.assert_close(think(loaded, q, lengths).latents, think(model, q, lengths).latents, rtol=0, atol=0)


def test_a_smaller_modulus_is_checked_and_evaluates_to_its_answers():
    programs = program_set(4, 30, seed=0, modulus=7)
    assert all(0 <= p.answer < 7 and evaluate_program(p.question, 7) == p.answer for p in programs)
    with pytest.raises(ValueError, match="modulus"):
        make_program(3, random.Random(0), modulus=24)


def test_train_and_bench_pccot_from_the_command_line(tmp_path, capsys):
    from jacobix.cli import main

    runs = tmp_path / "runs"
    tiny = ["--train-steps", "2", "--eval-every", "2", "--eval-per-difficulty", "2", "--batch-size", "4", "--dim", "16",
            "--layers", "1", "--latents", "2", "--min-steps", "1", "--max-steps", "2", "--modulus", "7"]
    for arm in ("seq", "pccot", "nocot"):
        assert main(["train", "pccot", "--arm", arm, "--passes", "1", "--out", str(runs / arm), *tiny]) == 0
    assert main(["train", "pccot", "--arm", "pccot", "--init", str(runs / "nocot"), "--out", str(tmp_path / "warm"), *tiny]) == 0
    meta = load_reasoner(runs / "pccot")[1]
    assert meta["train"]["arm"] == "pccot" and meta["config"]["latent"]["passes"] == 1 and meta["train"]["modulus"] == 7
    out = tmp_path / "bench.json"
    assert main(["bench", "pccot", "--runs", str(runs), "--per-difficulty", "8", "--quick", "--json", str(out)]) == 0
    import json

    records = {r["arm"]: r for r in json.loads(out.read_text())}
    assert set(records) == {"sequential", "pccot-T1", "pccot-T2", "no-cot"}  # the T = 1 checkpoint also run at T = c = 2
    for key in ("arm", "T", "c", "accuracy", "accuracy_std", "latency_b1_ms", "latency_vs_sequential", "train_s_per_1k_steps"):
        assert key in records["pccot-T1"]
    assert records["sequential"]["forward_passes"] == 3 and records["pccot-T1"]["forward_passes"] == 2  # c + 1, T + 1
    assert records["sequential"]["latency_vs_sequential"] == 1.0
    assert records["sequential"]["identity_check"]["answers_equal"] == 1.0
    capsys.readouterr()
    assert main(["bench", "pccot", "--runs", str(tmp_path / "nothing")]) == 2
    assert "--runs" in capsys.readouterr().err
    assert main(["bench", "text", "--runs", str(runs)]) == 2


def test_the_bundled_models_load_and_keep_the_T_equal_c_identity():
    from jacobix.core.checkpoints import ASSETS
    from jacobix.latent.evaluate import arm_answers, encode_questions
    from jacobix.latent.arith import heldout_set

    pccot, meta = load_reasoner(ASSETS / "pccot")
    sequential, _ = load_reasoner(ASSETS / "pccot-seq")
    programs = heldout_set(4, 16, modulus=meta["train"]["modulus"])
    assert arm_answers(pccot, programs, "pccot").forward_passes == pccot.latent.passes + 1
    q, lengths = encode_questions(programs)
    c = sequential.latent.latents
    with torch.no_grad():
        one = think(sequential, q, lengths, method="sequential")
        jacobi = think(sequential, q, lengths, method="jacobi", passes=c)
        torch.testing.assert_close(jacobi.latents, one.latents, rtol=1e-4, atol=1e-4)
        assert torch.equal(read_answer(sequential, jacobi).logits.argmax(-1), read_answer(sequential, one).logits.argmax(-1))
