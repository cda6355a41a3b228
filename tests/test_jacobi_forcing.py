"""Jacobi Forcing: noise schedule, packed sequences (equal to training each block unpacked), the trainer."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import jacobix
from jacobix.train.jacobi_forcing import (ForcingConfig, check_noisy, collate, noise, pack, packed_forward, pick_state,
                                          ramp_level, sample_batch, blocks_by_response, step_losses, train_forcing)
from jacobix.train.losses import IGNORE
from jacobix.train.trajectories import CollectConfig, collect

from conftest import tiny_model
from test_cllm import _prompts
from test_tree import _hf_llama

T = torch.tensor


def test_noise_is_the_share_of_the_block_from_its_first_mismatch():
    fixed = T([1, 2, 3, 4])
    states = T([[1, 2, 9, 4], [9, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 9]])
    assert noise(states, fixed, 4).tolist() == [0.5, 1.0, 0.0, 0.25]
    assert noise(states, fixed, 3).tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.0])  # past the length is not read


def test_the_ramp_climbs_from_clean_to_all_noise_and_starts_again():
    assert [ramp_level(j, 3) for j in range(7)] == [0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 0.0]
    assert [ramp_level(j, 3, start=2) for j in range(4)] == [1.0, 0.0, 0.5, 1.0]
    assert ramp_level(5, 1) == 0.0
    fixed = T([1, 2, 3, 4])
    states = T([[9, 9, 9, 9], [1, 9, 9, 9], [1, 2, 3, 9]])  # noise 1, 0.75, 0.25
    assert [pick_state(states, fixed, 4, level) for level in (0.0, 0.5, 0.8, 1.0)] == [2, 1, 1, 0]


def test_pack_lays_out_the_worked_example():
    # context a b (prompt a), blocks of 2: fixed c d | e f, noisy c X | Y Z
    a, b, c, d, e, f, x, y, z = range(9)
    row = pack(1, T([a, b]), [T([c, x]), T([y, z])], [T([c, d]), T([e, f])])
    assert row["tokens"].tolist() == [a, b, c, x, c, d, y, z, e, f]
    assert row["positions"].tolist() == [0, 1, 2, 3, 2, 3, 4, 5, 4, 5]
    seen = lambda i: row["visible"][i].nonzero().flatten().tolist()  # noqa: E731
    assert seen(9) == [0, 1, 4, 5, 8, 9]  # l1's f: context, l0, e f
    assert seen(7) == [0, 1, 2, 3, 6, 7]  # k1's Z: context, k0, Y Z
    assert seen(3) == [0, 1, 2, 3]
    # the clean stream's next tokens: from the prompt's last token on, never inside the prompt or the noisy blocks
    assert row["targets"].tolist() == [b, c, IGNORE, IGNORE, d, e, IGNORE, IGNORE, f, IGNORE]
    assert row["student"].tolist() == [2, 3, 6, 7] and row["teacher"].tolist() == [4, 5, 8, 9]
    assert row["trained"].tolist() == [False, True, True, True]  # block 0 first differs at slot 1, block 1 at 0


def test_pack_refuses_mismatched_blocks():
    with pytest.raises(ValueError, match="noisy state has 1 tokens"):
        pack(1, T([0, 1]), [T([2])], [T([2, 3])])
    with pytest.raises(ValueError, match="at least one block"):
        pack(1, T([0, 1]), [], [])


def _unpacked_losses(causal, prompt_length, context, noisy, clean):
    """The same losses from plain causal forwards: one per block for the student and the target, one for the stream."""
    students, teachers, masks = [], [], []
    for j, (k, l) in enumerate(zip(noisy, clean)):
        n = len(l)
        on_noisy = causal(torch.cat([context, *noisy[: j + 1]])[None])[0, -n:]
        with torch.no_grad():
            on_clean = causal(torch.cat([context, *clean[: j + 1]])[None])[0, -n:]
        mismatch = (k != l).nonzero()
        first = int(mismatch[0]) if len(mismatch) else n
        students.append(on_noisy)
        teachers.append(on_clean)
        masks.append(torch.arange(n) >= first)
    student, teacher, mask = torch.cat(students), torch.cat(teachers), torch.cat(masks)
    log_q, log_p = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    stream = torch.cat([context, *clean])
    logits = causal(stream[None, :-1])[0]
    ce = F.cross_entropy(logits[prompt_length - 1 :], stream[prompt_length:])
    return {"ar": ce, "consistency": (kl * mask).sum() / mask.sum()}


@pytest.mark.parametrize("kind", ["jacobix", "transformers"])
def test_packed_losses_and_gradients_equal_training_each_block_unpacked(kind):
    if kind == "jacobix":
        model = tiny_model(3, vocab=11)
        lm, causal = model, model
    else:
        from jacobix.integrations.hf.adapter import as_causal_lm

        model = _hf_llama()
        lm = as_causal_lm(model)
        causal = lambda tokens: lm.forward(tokens, torch.arange(tokens.shape[1])[None])  # noqa: E731
    g = torch.Generator().manual_seed(0)
    sequences = []
    for lengths in ((4, 4, 3), (4, 2)):
        clean = [torch.randint(11, (n,), generator=g) for n in lengths]
        noisy = [torch.where(torch.rand(len(l), generator=g) < 0.5, torch.randint(11, (len(l),), generator=g), l) for l in clean]
        sequences.append((3, torch.randint(11, (5,), generator=g), noisy, clean))
    batch = collate([pack(*s) for s in sequences])
    packed = step_losses(packed_forward(lm), batch)
    packed_total = packed["ar"] + packed["consistency"]
    packed_grads = torch.autograd.grad(packed_total, list(model.parameters()))
    # the packed batch's means run over every row's predictions together: weight the per-row references alike
    counts = [(len(s[1]) - s[0] + 1 + sum(len(c) for c in s[3]) - 1,
               int(sum((torch.arange(len(l)) >= _first(k, l)).sum() for k, l in zip(s[2], s[3])))) for s in sequences]
    references = [_unpacked_losses(causal, *s) for s in sequences]
    ar = sum(r["ar"] * c[0] for r, c in zip(references, counts)) / sum(c[0] for c in counts)
    consistency = sum(r["consistency"] * c[1] for r, c in zip(references, counts)) / sum(c[1] for c in counts)
    # the losses are computed in float32 (as in training), the references in float64
    assert float(packed["ar"].detach()) == pytest.approx(float(ar), abs=1e-6)
    assert float(packed["consistency"].detach()) == pytest.approx(float(consistency), abs=1e-6)
    grads = torch.autograd.grad(ar + consistency, list(model.parameters()))
    assert max(float((a - b).abs().max()) for a, b in zip(packed_grads, grads)) < 1e-6


def _first(k, l):
    mismatch = (k != l).nonzero()
    return int(mismatch[0]) if len(mismatch) else len(l)


@pytest.fixture(scope="module")
def trajectories():
    model = tiny_model(2, dtype=torch.float32)
    prompts = _prompts(6)
    return model, prompts, collect(model, prompts, prompts, CollectConfig(block_size=6, max_new_tokens=19, batch_size=3,
                                                                          repetition=None))


def test_batches_follow_the_ramp_and_keep_blocks_in_response_order(trajectories):
    _, _, data = trajectories
    responses = blocks_by_response(data)
    assert all(int(data.block_start[a]) < int(data.block_start[b]) for r in responses for a, b in zip(r, r[1:]))
    batch = sample_batch(data, responses, ForcingConfig(batch_size=4, blocks=2), torch.Generator().manual_seed(0))
    assert batch.tokens.shape[0] == 4 and batch.visible.shape[1:] == (batch.tokens.shape[1],) * 2
    assert bool(batch.trained.any())


def test_training_lowers_the_loss_and_the_student_stays_exact_under_greedy_jacobi(trajectories):
    model, prompts, data = trajectories
    config = ForcingConfig(steps=30, batch_size=4, blocks=3, lr=3e-3, warmup=2)
    log = train_forcing(model, packed_forward(model), data, config, log_every=1000)
    first, last = log.steps[0]["total"], sum(s["total"] for s in log.steps[-5:]) / 5
    assert last < first
    with torch.no_grad():
        ar = jacobix.generate(model, prompts, method="ar", max_new_tokens=20)
        jac = jacobix.generate(model, prompts, method="jacobi", window=6, init="context", max_new_tokens=20,
                               generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(ar.tokens, jac.tokens))


def test_trajectories_that_start_converged_are_refused(trajectories):
    _, _, data = trajectories
    converged = dataclasses.replace(data, states=data.fixed_points[data.state_block].clone())
    with pytest.raises(ValueError, match="starts at its fixed point"):
        check_noisy(converged)


def test_the_teacher_target_is_the_kl_to_the_frozen_teacher_on_the_clean_stream():
    model, other = tiny_model(3, vocab=11), tiny_model(4, vocab=11)
    t = torch.tensor
    batch = collate([pack(2, t([1, 2, 3]), [t([4, 9, 6]), t([7, 9])], [t([4, 5, 6]), t([7, 8])])])
    same = step_losses(packed_forward(model), batch, teacher=packed_forward(model))
    assert float(same["ar"]) == pytest.approx(0.0, abs=1e-9)  # a model is its own teacher: nothing to learn
    assert float(step_losses(packed_forward(model), batch, teacher=packed_forward(other))["ar"]) > 1e-3
    with pytest.raises(ValueError, match="needs the teacher's packed forward"):
        train_forcing(model, packed_forward(model), None, ForcingConfig(ar_target="teacher"))


def test_the_bundled_student_is_exact_under_every_greedy_decoder():
    from jacobix import LookaheadConfig, MultiBlock
    from jacobix.eval import worked_arith

    student = jacobix.load_text_model("arith-jf")
    prompts = [student.tokenizer.encode(p.prompt) for p in worked_arith.problems(20, worked_arith.HELDOUT_SEED)]
    reference = jacobix.generate(student.model, prompts, method="ar", max_new_tokens=57, eos_token_id=student.eos_token_id)
    recycle = LookaheadConfig(verify=4)
    for fields in (dict(window=16), dict(window=32, lookahead=recycle), dict(multiblock=MultiBlock(block=16, blocks=2)),
                   dict(multiblock=MultiBlock(block=16, blocks=2), lookahead=recycle)):
        for prompt, expected in zip(prompts, reference.tokens):  # batch 1, as the student is benchmarked
            out = jacobix.generate(student.model, prompt, method="jacobi", init="context", max_new_tokens=57,
                                   eos_token_id=student.eos_token_id, generator=torch.Generator().manual_seed(0), **fields)
            assert torch.equal(out.tokens[0], expected), fields


def test_empty_trajectories_are_refused():
    with pytest.raises(ValueError, match="hold no blocks"):
        from jacobix.train.trajectories import Trajectories

        e = torch.zeros(0, dtype=torch.long)
        Trajectories(prompts=torch.zeros(1, 1, dtype=torch.long), prompt_length=torch.ones(1, dtype=torch.long),
                     generated=torch.zeros(1, 1, dtype=torch.long), generated_length=torch.ones(1, dtype=torch.long),
                     truth=torch.zeros(1, 1, dtype=torch.long), truth_length=torch.ones(1, dtype=torch.long),
                     block_prompt=e, block_start=e, block_length=e, fixed_points=torch.zeros(0, 4, dtype=torch.long),
                     states=torch.zeros(0, 4, dtype=torch.long), state_block=e, block_size=4)
