"""The chain suite of PCCoT: the suite generator against an independent evaluator, the curriculum
and step targets on hand-built cases, fewer latents with a longer tail on the engine, the probes,
the bench's arms and intervals, and bad inputs."""

from __future__ import annotations

import json
import random

import pytest
import torch

from jacobix.bench.pccot import arm_plan, wilson
from jacobix.latent.arith import EOT, TOKEN_ID, encode, evaluate_program, heldout_set, make_program, program_set
from jacobix.latent.probes import fit_probe, probe_accuracy, probe_predict
from jacobix.latent.thoughts import read_answer, think
from jacobix.train.recipes.pccot import IGNORE, TrainConfig, curriculum_stage, make_batch, staged_tail, step_targets

from test_pccot import reasoner


def test_chain_programs_use_constants_only_and_their_values_match_an_independent_evaluator():
    for steps in (1, 3, 5):
        for p in program_set(steps, 200, seed=4, modulus=7, suite="chain"):
            lines = p.question.split(";")[1:-1]
            assert all(line[-1].isdigit() and not any(v in line[4:] for v in "abcdefghi") for line in lines), p.question
            assert evaluate_program(p.question, 7) == p.answer == p.values[-1]
            for i in range(1, steps + 1):  # each value is the program cut after step i
                prefix = ";".join(p.question.split(";")[: i + 1]) + f";?{'abcdefghi'[i]}"
                assert evaluate_program(prefix, 7) == p.values[i]
            assert p.cot == "".join(f"{'abcdefghi'[i]}={p.values[i]};" for i in range(1, steps))


def test_the_modular_task_draws_exactly_what_it_drew_before_the_chain_task_existed():
    rng = random.Random(5)
    program = make_program(4, rng, 7)  # default suite: modular, references to earlier variables allowed
    assert program.suite == "modular" and evaluate_program(program.question, 7) == program.answer
    questions = [p.question for p in program_set(4, 300, seed=1, modulus=7)]
    assert any(line[-1].isalpha() for q in questions for line in q.split(";")[2:-1])
    assert program_set(4, 50, seed=1, modulus=7, suite="chain") != program_set(4, 50, seed=1, modulus=7)
    assert heldout_set(4, 30, modulus=7, suite="chain") == heldout_set(4, 30, modulus=7, suite="chain")


def test_curriculum_stages_on_hand_built_cases():
    assert [curriculum_stage(s, 2, 3) for s in range(8)] == [1, 1, 2, 2, 3, 3, None, None]
    assert [curriculum_stage(s, 0, 3) for s in range(3)] == [None, None, None]
    assert curriculum_stage(0, 5, 0) is None  # nothing written to replace


def test_step_targets_and_staged_tail_on_a_hand_built_program():
    program = make_program(4, random.Random(2), 7, suite="chain")
    batch = make_batch([program])
    v = [TOKEN_ID[str(x)] for x in program.values]
    assert batch.values[0].tolist() == v
    assert step_targets(batch.values, 4)[0].tolist() == [v[1], v[2], v[3], v[4], IGNORE]  # <bot> says v1, slot 4 nothing
    assert step_targets(batch.values, 1)[0].tolist() == [v[1], v[2]]
    cot = encode(program.cot)
    tail = staged_tail([cot], 2, batch.answers)[0].tolist()
    assert tail == [EOT, *cot[4:], TOKEN_ID["answer"], TOKEN_ID[":"], v[4]]  # step 1 replaced, steps 2-3 written
    assert staged_tail([cot], 0, batch.answers)[0].tolist() == [EOT, TOKEN_ID["answer"], TOKEN_ID[":"], v[4]]


def test_fewer_latents_with_a_longer_tail_keep_the_T_equal_c_identity_in_float64():
    model = reasoner(3, max_seq_len=80)
    programs = program_set(4, 3, seed=0, suite="chain")
    from jacobix.latent.evaluate import encode_questions

    q, lengths = encode_questions(programs)
    tail = staged_tail([encode(p.cot) for p in programs], 1, make_batch(programs).answers)
    runs = [think(model, q, lengths, method=m, passes=p, latents=2, tail=tail.shape[1]) for m, p in (("sequential", None), ("jacobi", 2))]
    assert runs[0].latents.shape[1] == 2
    torch.testing.assert_close(runs[0].latents, runs[1].latents, rtol=0, atol=1e-12)
    answers = [read_answer(model, t, tail) for t in runs]
    assert answers[0].every_logits.shape[1] == 2 + tail.shape[1]
    torch.testing.assert_close(answers[0].every_logits, answers[1].every_logits, rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match="latents"):
        think(model, q, lengths, latents=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        think(model, q, lengths, tail=60)  # more than the context holds


def test_a_probe_reads_a_value_that_is_linearly_present_and_not_one_that_is_absent():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (600,), generator=generator)
    codes = torch.randn(7, 16, generator=generator, dtype=torch.float64)
    present = codes[labels] + 0.1 * torch.randn(600, 16, generator=generator, dtype=torch.float64)
    absent = torch.randn(600, 16, generator=generator, dtype=torch.float64)
    for features, low, high in ((present, 0.99, 1.0), (absent, 0.0, 0.3)):
        weights = fit_probe(features[:400], labels[:400], 7)
        accuracy = float((probe_predict(weights, features[400:]) == labels[400:]).double().mean())
        assert low <= accuracy <= high


def test_probe_accuracy_has_one_entry_per_latent_and_none_past_the_steps():
    model = reasoner(4, latents=5).float()
    train, test = program_set(3, 60, seed=1, modulus=7, suite="chain"), program_set(3, 40, seed=2, modulus=7, suite="chain")
    accuracy = probe_accuracy(model, train, test, method="sequential")
    assert len(accuracy) == 5 and accuracy[3:] == [None, None]
    assert all(0.0 <= a <= 1.0 for a in accuracy[:3])
    with pytest.raises(ValueError, match="one number of steps"):
        probe_accuracy(model, train + program_set(2, 5, seed=1, modulus=7, suite="chain"), test, method="sequential")


def test_wilson_interval_on_known_values():
    low, high = wilson(50, 100)
    assert abs(low - 0.4038) < 1e-3 and abs(high - 0.5962) < 1e-3
    assert wilson(0, 1000)[0] == 0.0 and wilson(1000, 1000)[1] == 1.0


def test_arm_plan_names_pccot_at_every_T_from_the_nearest_trained_checkpoint():
    from jacobix.bench.pccot import Checkpoint

    def checkpoint(arm: str, trained: int | None, c: int = 4) -> Checkpoint:
        return Checkpoint(folder=None, model=reasoner(0, latents=c), arm=arm, trained_T=trained, modulus=7, steps=(4,))

    plan = arm_plan([checkpoint("seq", None), checkpoint("pccot", 2), checkpoint("pccot", 2), checkpoint("cot", None)])
    assert set(plan) == {"sequential", "explicit-cot", "pccot-T1", "pccot-T2", "pccot-T3", "pccot-T4"}
    assert [t for _, _, t in plan["pccot-T3"]] == [3, 3] and all(c.trained_T == 2 for c, _, _ in plan["pccot-T3"])
    plan = arm_plan([checkpoint("pccot", 1), checkpoint("pccot", 3)])
    assert {c.trained_T for c, _, _ in plan["pccot-T2"]} == {1} and {c.trained_T for c, _, _ in plan["pccot-T4"]} == {3}


def test_train_config_refuses_a_curriculum_it_cannot_run():
    with pytest.raises(ValueError, match="--min-steps equal to --max-steps"):
        TrainConfig(arm="seq", suite="chain", min_steps=2, max_steps=4, curriculum=10)
    with pytest.raises(ValueError, match="arm seq or pccot"):
        TrainConfig(arm="cot", suite="chain", min_steps=4, max_steps=4, curriculum=10)
    with pytest.raises(ValueError, match="suite"):
        TrainConfig(suite="chains")


def test_chain_suite_from_the_command_line(tmp_path, capsys):
    from jacobix.cli import main

    runs = tmp_path / "runs"
    tiny = ["--suite", "chain", "--train-steps", "4", "--eval-every", "2", "--eval-per-difficulty", "2", "--batch-size", "4",
            "--dim", "16", "--layers", "1", "--latents", "3", "--min-steps", "3", "--max-steps", "3", "--modulus", "5"]
    assert main(["train", "pccot", "--arm", "cot", "--out", str(runs / "cot"), *tiny]) == 0
    assert main(["train", "pccot", "--arm", "seq", "--curriculum", "1", "--step-weight", "1", "--init", str(runs / "cot"),
                 "--out", str(runs / "seq"), *tiny]) == 0
    assert main(["train", "pccot", "--arm", "pccot", "--passes", "2", "--curriculum", "1", "--step-weight", "1",
                 "--out", str(runs / "pccot"), *tiny]) == 0
    out, plot = tmp_path / "bench.json", tmp_path / "curve.png"
    assert main(["bench", "pccot", "--suite", "chain", "--runs", str(runs), "--per-difficulty", "20", "--probe-programs", "30",
                 "--quick", "--json", str(out), "--plot", str(plot)]) == 0
    records = {r["arm"]: r for r in json.loads(out.read_text())}
    assert set(records) == {"explicit-cot", "sequential", "pccot-T1", "pccot-T2", "pccot-T3"}
    for r in records.values():
        for key in ("suite", "arm", "T", "accuracy", "accuracy_low", "accuracy_high", "latency_b1_ms", "latency_vs_sequential",
                    "latency_vs_explicit"):
            assert key in r
        assert r["suite"] == "chain" and r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"]
    for arm in ("sequential", "pccot-T1", "pccot-T2", "pccot-T3"):
        assert len(records[arm]["probe_accuracy"]) == 3
    assert [records[f"pccot-T{t}"]["forward_passes"] for t in (1, 2, 3)] == [2, 3, 4]  # T + 1
    assert records["sequential"]["forward_passes"] == 4 and records["sequential"]["latency_vs_sequential"] == 1.0
    assert plot.stat().st_size > 0
    capsys.readouterr()
    assert main(["bench", "pccot", "--suite", "modular", "--runs", str(runs / "seq")]) == 2  # trained on another suite
    assert "--suite chain" in capsys.readouterr().err
    assert main(["bench", "pccot", "--suite", "chains"]) == 2
    assert main(["train", "pccot", "--arm", "pccot", "--passes", "0", "--out", str(tmp_path / "x"), *tiny]) == 2
