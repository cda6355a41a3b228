"""Meta-World MT10 (optional extra jacobix[robot]): the wrapper, seeded variants, the quantised expert."""

from __future__ import annotations

import time

import numpy as np
import pytest

from jacobix.robot import ActionCodec, greedy_decider, load_policy, run_episodes, run_expert
from jacobix.robot import metaworld as mw
from jacobix.robot.suites import evaluation_episodes
from jacobix.tokens.decoding import Decoding

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not mw.available(), reason="metaworld is not installed: pip install 'jacobix[robot]'"),
]


def test_variants_are_seeded_and_bad_input_is_refused():
    env = mw.MetaWorld()
    first = env.reset("push-v3", 3)
    assert first.shape == (mw.OBS_DIM,) and first.dtype == np.float32
    for _ in range(5):
        env.step(np.array([0.5, 0.2, -0.3, 1.0], np.float32))
    assert np.array_equal(env.reset("push-v3", 3), first)
    assert np.array_equal(mw.MetaWorld().reset("push-v3", 3), first)
    assert not np.array_equal(env.reset("push-v3", 4), first)
    with pytest.raises(ValueError, match="unknown task 'fly-v3'; MT10 has: reach-v3"):
        env.reset("fly-v3", 0)
    with pytest.raises(ValueError, match=r"obs must have shape \(30,\)"):
        mw.expert("reach-v3", np.zeros(39))


def test_quantised_expert_succeeds_on_every_task_and_steps_are_fast():
    codec = ActionCodec()
    tasks, seeds = evaluation_episodes(mw.MT10, 2)
    success = run_expert(mw.MetaWorld, mw.expert, tasks, seeds, quantize=lambda a: codec.decode(codec.encode(a)).numpy())
    assert success.mean() >= 0.85
    env = mw.MetaWorld()
    env.reset("reach-v3", 0)
    start = time.perf_counter()
    for _ in range(50):
        env.step(np.zeros(4, np.float32))
    assert (time.perf_counter() - start) / 50 < 0.02  # about 0.6 ms per step measured


def test_bundled_mt10_policy_succeeds_and_greedy_jacobi_reproduces_ar():
    model, fmt = load_policy("metaworld-mt10-policy")
    assert fmt.tasks == mw.MT10 and fmt.obs_dim == mw.OBS_DIM and fmt.block == 17
    tasks, seeds = evaluation_episodes(mw.MT10, 1)
    ar = run_episodes(greedy_decider(model, fmt), mw.MetaWorld, fmt, tasks, seeds)
    assert ar.success.sum() >= 7  # 94.7% measured over 300 episodes
    jacobi = run_episodes(greedy_decider(model, fmt, Decoding(method="jacobi", window=fmt.block)), mw.MetaWorld, fmt, tasks[:3], seeds[:3])
    assert np.array_equal(jacobi.chunk_tokens, ar.chunk_tokens[:3]) and np.array_equal(jacobi.success, ar.success[:3])
