"""CEED-VLA: mixed labels, trajectories over an action block, and the lossy early exit on policies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import jacobix
from jacobix.train.ceed import CEEDConfig, collect_policy, mixed_labels, with_mixed_labels
from jacobix.train.cllm import CLLMConfig, causal_forward, train_cllm

from conftest import naive_greedy, tiny_model

BINS, END, ACT_DIM, CHUNK = 10, 10, 2, 3  # tokens 0..9 are action bins, 10 ends a chunk (vocab 11)
BLOCK = CHUNK * ACT_DIM + 1


def actions_of(tokens: torch.Tensor) -> torch.Tensor:
    """(N, BLOCK) -> (N, CHUNK, ACT_DIM): bin centres in [-1, 1], NaN where a token is not a bin."""
    body = tokens[:, :-1].double()
    values = -1 + (body + 0.5) * 2 / BINS
    return torch.where(body < BINS, values, math.nan).reshape(len(tokens), CHUNK, ACT_DIM)


def test_mixed_labels_take_the_teacher_only_within_delta_max():
    truth = torch.tensor([[1, 2, 3, 4, 5, 6, END]] * 3)
    teacher = torch.tensor([[1, 2, 3, 4, 5, 7, END],    # one bin (0.2) off: near
                            [1, 2, 3, 4, 5, 9, END],    # four bins off: far
                            [1, 2, END, 4, 5, 6, END]])  # not an action: never taken
    labels, near = mixed_labels(teacher, truth, actions_of(teacher), actions_of(truth), delta_max=0.25)
    assert near.tolist() == [True, False, False]
    assert torch.equal(labels, torch.stack([teacher[0], truth[1], truth[2]]))
    labels, near = mixed_labels(teacher, truth, actions_of(teacher), actions_of(truth), delta_max=0.0)
    assert near.tolist() == [False, False, False] and torch.equal(labels, truth)
    with pytest.raises(ValueError, match="same shapes"):
        mixed_labels(teacher[:, :3], truth, actions_of(teacher), actions_of(truth), 0.1)
    with pytest.raises(ValueError, match="delta_max"):
        CEEDConfig(delta_max=-1.0)


@pytest.fixture(scope="module")
def policy_data():
    model = tiny_model(7, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(BINS + 1, (12, 5), generator=g)
    targets = torch.cat([torch.randint(BINS, (12, BLOCK - 1), generator=g), torch.full((12, 1), END)], dim=1)
    data = collect_policy(model, prompts, targets, act_dim=ACT_DIM, config=CEEDConfig(collect_batch=5))
    return model, prompts, targets, data


def test_policy_trajectories_are_one_block_per_state_ending_at_the_greedy_chunk(policy_data):
    model, prompts, targets, data = policy_data
    assert len(data.block_prompt) == len(prompts) and data.block_size == BLOCK - 1 and data.init == "row-above"
    for p in range(len(prompts)):
        greedy = naive_greedy(model, prompts[p], BLOCK)
        assert torch.equal(data.generated[p, :BLOCK], greedy)
        assert torch.equal(data.fixed_points[p], greedy[1:])  # the prefill gives the first token, the block the rest
    assert torch.equal(data.truth, targets)


def test_with_mixed_labels_replaces_exactly_the_near_chunks(policy_data):
    _, _, targets, data = policy_data
    teacher = data.generated[:, :BLOCK]
    far = with_mixed_labels(data, actions_of, delta_max=0.0)[0]  # 0: only identical chunks
    assert torch.equal(far.truth, targets)
    mixed, near = with_mixed_labels(data, actions_of, delta_max=2.0)  # everything in range is near
    valid = ~torch.isnan(actions_of(teacher)).flatten(1).any(1)
    assert torch.equal(near, valid)
    assert torch.equal(mixed.truth, torch.where(valid[:, None], teacher, targets))


def test_a_few_ceed_steps_lower_the_loss_and_keep_jacobi_exact(policy_data):
    model, prompts, _, data = policy_data
    student = tiny_model(7, dtype=torch.float32)
    student.load_state_dict(model.state_dict())
    mixed, _ = with_mixed_labels(data, actions_of, delta_max=0.3)
    config = CLLMConfig(steps=30, batch_size=8, lr=3e-3, warmup=2, ar_weight=1.0, fixed_point_weight=0.0,
                        context_limit=None)
    log = train_cllm(student, causal_forward(student), mixed, config, log_every=100)
    first, last = log.steps[0]["total"], sum(s["total"] for s in log.steps[-5:]) / 5
    assert last < first
    for p in range(3):
        out = jacobix.generate(student, prompts[p], method="jacobi", window=BLOCK - 1, block=True, init="row-above",
                               row_length=ACT_DIM, max_new_tokens=BLOCK)
        assert torch.equal(out.tokens[0], naive_greedy(student, prompts[p], BLOCK))


def test_the_shipped_student_decodes_exactly_in_fewer_passes_than_its_teacher():
    from jacobix.robot import evaluation_episodes, get_suite, load_policy
    from jacobix.robot.rollout import chunk_jacobi

    teacher, fmt = load_policy("pointmass-policy")
    student, student_fmt = load_policy("pointmass-policy-ceed")
    assert student_fmt == fmt
    suite = get_suite("pointmass")
    env = suite.make_env()
    tasks, seeds = evaluation_episodes(suite.tasks, 8)
    prompts = fmt.prompts(tasks, np.stack([env.reset(t, s) for t, s in zip(tasks, seeds)]))  # (24, Lp)
    passes = {}
    for name, model in (("teacher", teacher), ("student", student)):
        out = jacobix.generate(model, prompts, decoding=chunk_jacobi(fmt), max_new_tokens=fmt.block)
        ar = jacobix.generate(model, prompts, method="ar", max_new_tokens=fmt.block)
        assert all(torch.equal(a, b) for a, b in zip(out.tokens, ar.tokens))
        passes[name] = int(out.stats.active_per_pass.sum())
    assert passes["student"] < passes["teacher"]
