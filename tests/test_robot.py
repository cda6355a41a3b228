"""Robot policies: codecs, the token format, the numpy point-mass suite, rollouts, demonstrations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from jacobix.tokens.decoding import Decoding

from jacobix.models.llama import Llama, LlamaConfig
from jacobix.robot import (
    ActionCodec, ObservationCodec, PolicyFormat, collect_demonstrations, greedy_decider, load_demonstrations,
    load_policy, run_episodes, run_expert, wilson_interval,
)
from jacobix.robot.pointmass import MAX_STEPS, TASKS, PointMass, expert
from jacobix.robot.suites import evaluation_episodes
from jacobix.train.recipes.policy import IGNORE, bc_loss, main, sequences


def small_format(chunk: int = 2, obs_bins: int = 16) -> PolicyFormat:
    return PolicyFormat(tasks=TASKS, obs_low=(-2.0,) * 9, obs_high=(2.0,) * 9, obs_bins=obs_bins, chunk=chunk)


# --- the numpy suite ---
@pytest.mark.parametrize("task", TASKS)
def test_pointmass_expert_succeeds_and_constant_actions_do_not(task):
    seeds = list(range(40))
    assert run_expert(PointMass, expert, [task] * 40, seeds).all()
    assert run_expert(PointMass, expert, [task] * 40, seeds, batch_size=7).all()
    codec = ActionCodec()
    quantised = run_expert(PointMass, expert, [task] * 40, seeds, quantize=lambda a: codec.decode(codec.encode(a)).numpy())
    assert quantised.mean() >= 0.95
    for constant in ([1, 1, 1, 1], [-1, 0.5, -1, 1], [0, 0, 1, 1]):
        stuck = run_expert(PointMass, lambda t, o, c=constant: np.array(c, np.float32), [task] * 40, seeds)
        assert stuck.mean() < 0.2


def test_pointmass_is_seeded_and_checks_its_input():
    env = PointMass()
    first = env.reset("carry", 7)
    env.step(np.ones(4, np.float32))
    assert np.array_equal(env.reset("carry", 7), first)
    assert not np.array_equal(env.reset("carry", 8), first)
    with pytest.raises(ValueError, match="unknown task 'fly'.*reach, press, carry"):
        env.reset("fly", 0)
    with pytest.raises(ValueError, match="action must have shape"):
        env.step(np.zeros(3, np.float32))


# --- codecs ---
def test_action_round_trip_within_half_a_bin():
    codec = ActionCodec(bins=256)
    actions = torch.cat((torch.rand(5000) * 2 - 1, torch.tensor([-1.0, 1.0, 0.0, -0.9921875])))
    bins = codec.encode(actions)
    assert bins.dtype == torch.long and int(bins.min()) >= 0 and int(bins.max()) <= 255
    assert (codec.decode(bins) - actions).abs().max() <= codec.width / 2 + 1e-6
    assert codec.encode(torch.tensor([-1.0, 1.0])).tolist() == [0, 255]
    assert torch.equal(codec.encode(codec.decode(torch.arange(256))), torch.arange(256))


def test_out_of_range_actions_name_the_argument():
    codec = ActionCodec()
    for bad in ([0.0, 1.01], [-1.5], [float("nan")]):
        with pytest.raises(ValueError, match="actions must lie in"):
            codec.encode(bad)
    with pytest.raises(ValueError, match="actions must lie in"):
        small_format().target(np.full((2, 4), 2.0))


def test_observation_codec_fits_clamps_and_checks_size():
    data = np.array([[0.0, 5.0, 1.0], [1.0, 7.0, 1.0]], np.float32)
    codec = ObservationCodec.fit(data, bins=10, margin=0.0)
    assert codec.low[:2] == (0.0, 5.0) and codec.high[:2] == (1.0, 7.0) and codec.high[2] > codec.low[2]
    assert codec.encode([[0.0, 5.0, 1.0], [1.0, 7.0, 1.0], [-9.0, 99.0, 1.0]]).tolist() == [[0, 0, 5], [9, 9, 5], [0, 9, 5]]
    assert (codec.decode(codec.encode(data))[:, :2] - torch.from_numpy(data[:, :2])).abs().max() <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="observations must have 3 values"):
        codec.encode(np.zeros(4))


# --- the token format ---
def test_policy_format_layout_prompt_target_actions():
    fmt = small_format(chunk=2)
    assert fmt.action_tokens == (0, 256) and fmt.block == 9 and fmt.prompt_length == 11
    assert fmt.end_token == fmt.vocab_size - 1 == 256 + 16 + 3 + 1
    obs = np.linspace(-1, 1, 9, dtype=np.float32)
    prompt = fmt.prompt("press", obs)
    assert prompt.shape == (11,) and prompt[0] == fmt.bos_token and prompt[1] == fmt.task_first + 1
    assert (prompt[2:] - fmt.obs_first).tolist() == fmt.obs_codec.encode(obs).tolist()
    assert torch.equal(fmt.prompts(["press", "reach"], np.stack([obs, obs]))[0], prompt)
    actions = torch.rand(3, 2, 4) * 2 - 1
    target = fmt.target(actions)  # (3, 9)
    assert target.shape == (3, 9) and (target[:, -1] == fmt.end_token).all() and (target[:, :-1] < 256).all()
    assert (fmt.actions(target) - actions).abs().max() <= fmt.action_codec.width / 2 + 1e-6
    assert torch.equal(fmt.actions(target), fmt.actions(target[:, :-1]))
    assert PolicyFormat.from_dict(fmt.to_dict()) == fmt


def test_policy_format_bad_inputs_and_garbage_tokens():
    fmt = small_format()
    with pytest.raises(ValueError, match="unknown task 'fly'; this policy knows: reach, press, carry"):
        fmt.prompt("fly", np.zeros(9))
    with pytest.raises(ValueError, match=r"observation must have shape \(9,\)"):
        fmt.prompt("reach", np.zeros(8))
    with pytest.raises(ValueError, match="observations must have 9 values"):
        fmt.prompts(["reach"], np.zeros((1, 10)))
    tokens = fmt.target(np.full((2, 4), 0.5))
    tokens[0], tokens[5] = fmt.end_token, fmt.bos_token
    actions = fmt.actions(tokens)
    assert actions[0, 0].item() == 0.0 and actions[1, 1].item() == 0.0 and actions[0, 1].item() > 0.49
    assert fmt.invalid(tokens).item() == 2


# --- demonstrations and the training data ---
def test_demonstrations_chunk_clean_expert_actions(tmp_path):
    demos = collect_demonstrations(PointMass, expert, ["reach", "carry"], [0, 1], chunk=3, noise=0.3,
                                   rng=np.random.default_rng(0), all_tasks=TASKS)
    assert demos.obs.shape[1] == 9 and demos.actions.shape[1:] == (3, 4) and demos.tasks == TASKS
    for i in range(len(demos)):
        assert np.allclose(demos.actions[i, 0], expert(demos.tasks[demos.task[i]], demos.obs[i]), atol=1e-6)
        if i + 1 < len(demos) and demos.episode[i + 1] == demos.episode[i]:
            assert np.array_equal(demos.actions[i, 1:], demos.actions[i + 1, :-1])
    back = load_demonstrations(demos.save(tmp_path))
    assert np.array_equal(back.actions, demos.actions) and back.tasks == demos.tasks and back.noise == 0.3


def test_sequences_mask_the_prompt_and_bc_loss_matches_a_hand_computation():
    demos = collect_demonstrations(PointMass, expert, ["press"], [3], chunk=2, noise=0.0, rng=np.random.default_rng(0))
    fmt = PolicyFormat(tasks=("press",), obs_low=(-1.5,) * 9, obs_high=(1.5,) * 9, obs_bins=8, chunk=2)
    inputs, labels = sequences(fmt, demos)
    assert inputs.shape == labels.shape == (len(demos), fmt.prompt_length + fmt.block - 1)
    assert (labels[:, : fmt.prompt_length - 1] == IGNORE).all()
    assert torch.equal(labels[:, fmt.prompt_length - 1:], fmt.target(demos.actions))
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 1.0]]])  # (1, 2, 2)
    loss = bc_loss(logits, torch.tensor([[1, IGNORE]]))
    assert loss.item() == pytest.approx(-math.log(0.75))


# --- rollouts ---
def tiny_model(fmt: PolicyFormat, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(LlamaConfig(vocab_size=fmt.vocab_size, dim=32, num_layers=2, num_heads=2, num_kv_heads=1,
                             hidden_dim=64, max_seq_len=64)).eval()


def test_rollout_order_batches_and_chunk_records():
    fmt = small_format(chunk=3)
    tasks, seeds = evaluation_episodes(TASKS, 3)
    decide = greedy_decider(tiny_model(fmt), fmt)
    whole = run_episodes(decide, PointMass, fmt, tasks, seeds)
    parts = run_episodes(decide, PointMass, fmt, tasks, seeds, batch_size=4)
    assert np.array_equal(whole.chunk_tokens, parts.chunk_tokens) and np.array_equal(whole.steps, parts.steps)
    assert (whole.chunks == np.ceil(whole.steps / 3)).all() and whole.steps.max() <= MAX_STEPS
    used = np.arange(whole.chunk_passes.shape[1])[None] < whole.chunks[:, None]
    assert (whole.chunk_passes[used] == fmt.block - 1).all() and (whole.chunk_passes[~used] == 0).all()
    assert (whole.chunk_tokens[~used] == -1).all() and (whole.chunk_tokens[used][:, -1] >= 0).all()


def test_rollout_of_a_decoder_that_replays_the_expert_succeeds():
    fmt = small_format(chunk=1, obs_bins=4096)  # fine bins: the decoded observation is near the true one
    def decide(prompts):
        obs = fmt.obs_codec.decode(prompts[:, 2:] - fmt.obs_first).numpy()
        tasks = [fmt.tasks[int(t) - fmt.task_first] for t in prompts[:, 1]]
        actions = np.stack([expert(t, o) for t, o in zip(tasks, obs)])[:, None]  # (B, 1, 4)
        return fmt.target(actions), torch.ones(len(prompts), dtype=torch.long)
    tasks, seeds = evaluation_episodes(TASKS, 5)
    result = run_episodes(decide, PointMass, fmt, tasks, seeds)
    assert result.success.all() and result.passes_per_chunk == 1.0 and result.per_task() == {t: 1.0 for t in TASKS}


@pytest.mark.parametrize("model_source", ["random", "bundled"])
def test_greedy_jacobi_equals_ar_in_every_step_of_an_episode(model_source):
    if model_source == "bundled":
        model, fmt = load_policy("pointmass-policy")
    else:
        fmt = small_format(chunk=4)
        model = tiny_model(fmt, seed=3)
    tasks, seeds = evaluation_episodes(TASKS, 2)
    ar = run_episodes(greedy_decider(model, fmt), PointMass, fmt, tasks, seeds)
    jacobi = run_episodes(greedy_decider(model, fmt, Decoding(method="jacobi", window=fmt.block)), PointMass, fmt, tasks, seeds)
    assert np.array_equal(ar.chunk_tokens, jacobi.chunk_tokens)
    assert np.array_equal(ar.success, jacobi.success) and np.array_equal(ar.steps, jacobi.steps)
    assert jacobi.passes_per_chunk <= ar.passes_per_chunk


def test_bundled_pointmass_policy_loads_and_beats_chance():
    model, fmt = load_policy("pointmass-policy")
    assert fmt.tasks == TASKS and fmt.block == 17 and model.config.vocab_size == fmt.vocab_size
    tasks, seeds = evaluation_episodes(TASKS, 4)
    result = run_episodes(greedy_decider(model, fmt), PointMass, fmt, tasks, seeds)
    assert result.success_rate >= 0.5
    with pytest.raises(FileNotFoundError, match="not a bundled name"):
        load_policy("no-such-policy")


def test_wilson_interval_against_hand_computed_values():
    low, high = wilson_interval(8, 10)  # p = .8: (0.8 + 0.19208 -+ 1.96 sqrt(0.016 + 0.009604)) / 1.38416
    assert low == pytest.approx(0.49016, abs=1e-5) and high == pytest.approx(0.94331, abs=1e-5)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(5, 3)


def test_trainer_writes_a_loadable_policy_its_demonstrations_and_its_record(tmp_path):
    main(["--suite", "pointmass", "--out", str(tmp_path), "--episodes-per-task", "3", "--steps", "3", "--dim", "32",
          "--num-layers", "1", "--eval-per-task", "1", "--save-every", "2"])
    model, fmt = load_policy(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert fmt.tasks == TASKS and model.config.dim == 32 and meta["train"]["steps"] == 3
    assert meta["evaluation"]["episodes"] == 3 and 0.0 <= meta["evaluation"]["success_rate"] <= 1.0
    assert meta["reproduce"].startswith("jacobix train policy --suite pointmass") and "--steps 3" in meta["reproduce"]
    demos = load_demonstrations(tmp_path)
    assert len(demos) == meta["demonstrations"]["samples"] and set(demos.task.tolist()) == {0, 1, 2}
