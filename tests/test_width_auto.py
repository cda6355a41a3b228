"""window="auto": the adaptive width on models whose acceptance is known, fixed cost tables, and
the calibration files it plans with."""

from __future__ import annotations

import json
import math

import numpy as np

import pytest
import torch

import jacobix
from jacobix.core.sampling import SamplingConfig
from jacobix.tokens.decoding import Decoding
from jacobix.tokens.generate import generate
from jacobix.tokens.width.calibration import Calibration, cache_path, where_of
from jacobix.tokens.width.policy import ARM_WIDTHS, AdaptiveConfig

from conftest import tiny_model


class PositionCache:
    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def rollback(self, lengths):
        pass

    def copy_slots(self, source_rows, positions):
        pass


class PositionModel(torch.nn.Module):
    """The token at position ``p`` is ``(3 p + 1) mod V`` whatever came before: greedy Jacobi
    converges in two sweeps (one to replace fresh drafts by outputs, one to confirm them)."""

    vocab_size = 13

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def new_cache(self, batch_size: int, capacity: int) -> PositionCache:
        return PositionCache(batch_size)

    def embed(self, tokens):
        return torch.zeros(*tokens.shape, 1, dtype=torch.float64)

    def forward(self, tokens, positions, cache=None, *, embeds=None, return_hidden=False):
        target = (3 * (positions + 1) + 1) % self.vocab_size  # (B, W) the next token after each position
        return torch.nn.functional.one_hot(target, self.vocab_size).double() * 10.0 + self.weight


def calibration(model, rows: dict[int, dict[int, float]], dtype=torch.float64) -> Calibration:
    return Calibration(where_of(model, "cpu", dtype), {r: {w: float(c) for w, c in s.items()} for r, s in rows.items()},
                       {r: 1e-3 for r in rows})


def linear(slope: float) -> dict[int, float]:
    return {w: 1.0 + slope * (w - 1) for w in ARM_WIDTHS}


def test_auto_finds_the_wide_window_of_a_model_that_converges_in_two_sweeps():
    model = PositionModel()
    costs = calibration(model, {1: linear(0.02)})  # a 16-token pass at 1.3x: a small model on a CPU
    prompt = [[1, 2, 3]]
    ar = generate(model, prompt, Decoding(method="ar"), max_new_tokens=200)
    auto = generate(model, prompt, Decoding(window="auto", costs=costs), max_new_tokens=200)
    fixed = generate(model, prompt, Decoding(window=16), max_new_tokens=200)
    assert torch.equal(auto.tokens[0], ar.tokens[0])
    fed = auto.stats.fed_per_pass.tolist()
    assert fed[:3] == [15, 15, 15]  # the start probes the widest arm worth trying
    # and keeps it (8.5 tokens a pass at 1.3x the cost of one; its outcome is read one pass late)
    assert sum(f == 15 for f in fed[3:]) >= len(fed[3:]) - 1
    assert auto.stats.forward_passes <= fixed.stats.forward_passes + 2


def test_auto_falls_back_to_sequential_where_drafts_do_not_pay_and_the_probes_cost_little():
    model = tiny_model(5, vocab=50)
    costs = calibration(model, {1: linear(0.1)})
    spec = Decoding(method="sjd", window="auto", costs=costs)
    out = generate(model, [[1, 2, 3]], spec, SamplingConfig(temperature=1.0), max_new_tokens=300,
                   generator=torch.Generator().manual_seed(0))
    fed = out.stats.fed_per_pass.tolist()
    paid = sum(costs.ratio(1, f + 1) for f in fed)  # one-token passes' worth of cost
    probes = sum(1 for i, f in enumerate(fed) if f > 0 and (i == 0 or fed[i - 1] == 0))
    longest = AdaptiveConfig().probe_passes + 1  # a probe's minimum, read one pass late
    assert sum(f == 0 for f in fed) > 0.85 * len(fed)
    assert probes <= 1 + math.log2(300 / 32)
    assert paid <= 300 + probes * longest * (costs.ratio(1, 16) - 1)  # the probes' bound


def test_auto_makes_the_same_choices_on_every_run_with_a_fixed_cost_table():
    model = tiny_model(2, vocab=11)
    costs = calibration(model, {1: linear(0.02), 4: linear(0.2)})
    runs = []
    for _ in range(2):
        out = generate(model, [[1, 2], [3, 4, 5], [6], [7, 8]], Decoding(method="sjd", window="auto", costs=costs),
                       SamplingConfig(temperature=0.8), max_new_tokens=60, generator=torch.Generator().manual_seed(3))
        runs.append((out.stats.fed_per_pass.tolist(), [t.tolist() for t in out.tokens]))
    assert runs[0] == runs[1]
    assert max(runs[0][0]) > 0


def test_the_batch_dimension_of_the_cost_table_narrows_the_window():
    model = PositionModel()
    flat_at_one, dear_at_sixteen = {w: 1.0 for w in ARM_WIDTHS}, {w: float(w) * 1.2 for w in ARM_WIDTHS}
    costs = calibration(model, {1: flat_at_one, 16: dear_at_sixteen})
    one = generate(model, [[1]], Decoding(window="auto", costs=costs), max_new_tokens=64)
    many = generate(model, [[1]] * 16, Decoding(window="auto", costs=costs), max_new_tokens=64)
    assert one.stats.fed_per_pass.float().mean() > 10
    assert (many.stats.fed_per_pass == 0).all()  # B x k tokens cost more than k single steps save


def test_a_calibration_for_another_model_or_device_is_refused():
    model, other = tiny_model(1), tiny_model(1, vocab=17)
    costs = calibration(other, {1: linear(0.1)})
    with pytest.raises(ValueError, match="measured for model .* run `jacobix calibrate`"):
        generate(model, [[1, 2]], Decoding(window="auto", costs=costs), max_new_tokens=4)
    moved = Calibration(costs.where.__class__(**{**vars(where_of(model, "cpu", torch.float64)), "device": "cuda:H100"}),
                        costs.costs, costs.seconds)
    with pytest.raises(ValueError, match="cuda:H100"):
        generate(model, [[1, 2]], Decoding(window="auto", costs=moved), max_new_tokens=4)


def test_a_calibration_file_round_trips_and_decoding_takes_its_path(tmp_path):
    model = tiny_model(1)
    costs = calibration(model, {1: linear(0.1), 8: linear(0.5)})
    path = costs.save(tmp_path / "costs.json")
    assert Calibration.load(path) == costs
    assert Decoding(window="auto", costs=str(path)).costs.calibration == costs
    assert Calibration.load(path).ratio(3, 16) == pytest.approx(1 + 15 * (0.1 + 0.4 * 0.52832), rel=1e-3)  # log-rows
    for text in ("{", json.dumps({"format": "other"}), json.dumps({**costs.record(), "costs": {"1": {"2": -1}}})):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ValueError, match="bad.json: not a usable jacobix pass-cost file"):
            Calibration.load(tmp_path / "bad.json")


def test_a_damaged_cached_calibration_is_never_trusted_and_is_written_anew(caplog):
    model = tiny_model(4)
    where = where_of(model, "cpu", torch.float64, "jacobi/random/greedy")  # the kind of pass generate runs below
    path = cache_path(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"format": "jacobix-pass-costs/1", "costs": {"1": {"1": "NaN"')
    out = generate(model, [[1, 2, 3]], Decoding(window="auto"), max_new_tokens=12)
    assert torch.equal(out.tokens[0], generate(model, [[1, 2, 3]], Decoding(method="ar"), max_new_tokens=12).tokens[0])
    assert "damaged pass-cost file" in caplog.text
    rebuilt = Calibration.load(path)  # the live probe's measurement replaced it
    assert rebuilt.where == where and 1 in rebuilt.costs


def test_sjd_with_auto_width_samples_the_target_distribution():
    from conftest import exact_joint
    from test_sjd_distribution import chi_square_pvalue

    model = tiny_model(11, vocab=5, dim=16)
    rows, length = 6000, 3
    costs = calibration(model, {rows: {w: 1.0 for w in ARM_WIDTHS}})  # free drafts: the policy feeds them
    out = jacobix.generate(model, [[1, 3, 0]] * rows, method="sjd", window="auto", temperature=1.0, costs=costs,
                           max_new_tokens=length, generator=torch.Generator().manual_seed(9))
    assert out.stats.fed_per_pass.max() > 0
    joint = exact_joint(model, [1, 3, 0], length, SamplingConfig(temperature=1.0))
    assert chi_square_pvalue([tuple(t.tolist()) for t in out.tokens], joint) > 1e-3


def _policy(costs: dict[int, float], sources=(("jacobi", 0.1),), drafts: int = 15, **config):
    from jacobix.tokens.proposers.base import DraftSource
    from jacobix.tokens.width.costs import FixedCosts
    from jacobix.tokens.width.policy import AdaptiveConfig, AdaptiveWidth

    return AdaptiveWidth(tuple(DraftSource(n, p) for n, p in sources), drafts, FixedCosts(costs), AdaptiveConfig(**config))


def _play(policy, passes: int, accepts, source: int = 0) -> list[int]:
    """Run ``passes`` passes where ``accepts(fed)`` drafts pass; the outcome is observed one pass late,
    as the token problem does."""
    fed_log, pending = [], None
    for _ in range(passes):
        ids = torch.full((1, 1, policy.drafts), source)
        fed = policy.choose(ids, torch.ones_like(ids, dtype=torch.bool))
        if pending is not None:
            policy.observe(*pending)
        pending = (ids, torch.tensor([[accepts(fed)]]), fed)
        fed_log.append(fed)
    return fed_log


def test_probes_double_their_interval_and_stop_where_drafts_never_pass():
    policy = _policy(linear(0.1))
    fed = _play(policy, 300, lambda fed: 0)
    wide = [i for i, f in enumerate(fed) if f > 0]
    starts = [i for i in wide if i == 0 or fed[i - 1] == 0]
    assert starts == [0, 32, 96, 224][: len(starts)] and len(starts) <= 4  # 1 + log2(300 / 32) probes at most
    assert len(wide) <= (AdaptiveConfig().probe_passes + 1) * len(starts)  # each stops after its minimum (read one pass late)


def test_a_probe_that_pays_goes_on_and_the_policy_keeps_the_arm():
    policy = _policy(linear(0.02))
    fed = _play(policy, 60, lambda fed: fed)  # every draft passes: 16 tokens for 1.3x
    assert all(f == 15 for f in fed[:3]) and sum(f == 15 for f in fed) >= 58


def test_a_confident_prior_feeds_pool_drafts_without_a_probe_and_a_weak_one_does_not():
    sources = (("jacobi", 0.1), ("text-2", 0.9))
    strong, weak = _policy(linear(0.02), sources, drafts=4), _policy(linear(0.02), sources, drafts=4)
    for policy in (strong, weak):
        policy._next_probe = 10 ** 9  # no probe in this test
    text = torch.full((1, 1, 4), 1)
    jacobi = torch.zeros((1, 1, 4), dtype=torch.long)
    assert strong.choose(text, torch.ones_like(text, dtype=torch.bool)) == 4
    assert weak.choose(jacobi, torch.ones_like(jacobi, dtype=torch.bool)) == 0


def test_slack_keeps_the_current_arm_among_near_ties():
    policy = _policy({w: float(w) for w in ARM_WIDTHS}, drafts=3, slack=0.05)
    fed = _play(policy, 40, lambda fed: fed)  # k drafts all pass: k + 1 tokens at cost k + 1, a tie with AR
    assert len(set(fed[4:])) == 1  # no switching back and forth between equally fast arms


@pytest.mark.parametrize("bad", [dict(decay=0.0), dict(slack=1.0), dict(probe_passes=1), dict(confidence=-1.0),
                                 dict(prior_weight=0.0)])
def test_adaptive_config_refuses_bad_values(bad):
    from jacobix.tokens.width.policy import AdaptiveConfig

    with pytest.raises(ValueError, match="AdaptiveConfig"):
        AdaptiveConfig(**bad)


def test_a_cost_book_sent_to_another_process_starts_its_timings_afresh():
    import pickle

    model = tiny_model(1)
    spec = Decoding(window="auto", costs=calibration(model, {1: linear(0.1)}))
    generate(model, [[1, 2]], spec, max_new_tokens=8)
    assert spec.costs.policies
    copy = pickle.loads(pickle.dumps(spec))
    assert copy.costs.calibration == spec.costs.calibration and not copy.costs.policies and not copy.costs.tables
    generate(model, [[1, 2]], copy, max_new_tokens=8)  # its arrays are its own and writable


def test_calibrate_measures_whole_passes_and_the_command_writes_the_file(tmp_path, capsys):
    from jacobix.cli import main
    from jacobix.tokens.calibrate import calibrate

    model = tiny_model(2, dtype=torch.float32)
    measured = calibrate(model, batch_sizes=(1, 3), rounds=3, passes=4)
    assert set(measured.costs) == {1, 3} and all(shape[1] == 1.0 for shape in measured.costs.values())
    assert all(list(shape.values()) == sorted(shape.values()) for shape in measured.costs.values())
    assert measured.where == where_of(model, "cpu", torch.float32)
    out = tmp_path / "costs.json"
    assert main(["calibrate", "--batch-sizes", "1", "--rounds", "3", "--output", str(out), "--plot",
                 str(tmp_path / "costs.png")]) == 0
    assert Calibration.load(out).costs[1][1] == 1.0 and (tmp_path / "costs.png").stat().st_size > 0
    assert "k=16" in capsys.readouterr().out
    for bad, message in ((["--rounds", "2"], "--rounds"), (["--model", "nonesuch"], "--model"),
                         (["--output", str(tmp_path)], "is a folder")):
        assert main(["calibrate", *bad]) == 2
        assert message in capsys.readouterr().err


def test_two_models_of_one_shape_share_costs_but_not_what_the_policy_learnt():
    first, second = tiny_model(1), tiny_model(2)
    spec = Decoding(window="auto", costs=calibration(first, {1: linear(0.1)}))
    for model in (first, second):
        generate(model, [[1, 2]], spec, max_new_tokens=8)
    assert where_of(first, "cpu", torch.float64) == where_of(second, "cpu", torch.float64)
    assert len(spec.costs.policies) == 2


def test_where_wide_passes_are_dear_the_first_probe_is_narrow():
    policy = _policy({w: 1.0 + 0.3 * (w - 1) for w in ARM_WIDTHS})  # a large batch: 16 tokens cost 5.5x one
    fed = _play(policy, 1, lambda fed: fed)
    assert fed == [1]  # a failed probe of one draft wastes 7 x 0.3 passes; of two, 7 x 0.6 > 3


def test_each_kind_of_pass_has_its_own_costs(tmp_path, monkeypatch, capsys):
    from jacobix.cli import main
    from jacobix.tokens.generate import pass_kind

    monkeypatch.setenv("JACOBIX_COSTS", str(tmp_path))
    model = tiny_model(6, dtype=torch.float32)
    generate(model, [[1, 2, 3]], Decoding(window="auto", init="repeat"), max_new_tokens=10)
    generate(model, [[1, 2, 3]], Decoding(method="sjd", window="auto", init="repeat"), SamplingConfig(temperature=0.8),
             max_new_tokens=10, generator=torch.Generator().manual_seed(0))
    kinds = sorted(Calibration.load(path).where.kind for path in tmp_path.glob("*.json"))
    assert kinds == ["jacobi/repeat/greedy", "sjd/repeat/sampled"]
    assert pass_kind(Decoding(method="sjd-coupled", init="prior-above"), SamplingConfig(temperature=1.0), True) \
        == "sjd-coupled/prior-above/sampled/guided"
    assert main(["calibrate", "--window", "8"]) == 2 and "--window" in capsys.readouterr().err


def _play_batch(policy, passes: int, accepts, rows: int) -> list[int]:
    """``_play`` for a batch whose row ``r`` accepts ``accepts(fed, r)`` drafts; the laggard is
    measured as the token problem does (the fewest drafts accepted by a row over the rows' mean)."""
    fed_log, pending, gains = [], None, np.zeros(rows)
    for _ in range(passes):
        policy.rows = rows
        policy.laggard = gains.min() / gains.mean() if gains.mean() > 0 else 1.0
        ids = torch.zeros((rows, 1, policy.drafts), dtype=torch.long)
        fed = policy.choose(ids, torch.ones_like(ids, dtype=torch.bool))
        if pending is not None:
            policy.observe(*pending)
            gains += pending[1][:, 0].numpy()
        pending = (ids, torch.tensor([[accepts(fed, row)] for row in range(rows)]), fed)
        fed_log.append(fed)
    return fed_log


def test_in_a_batch_a_width_must_pay_for_the_slowest_row():
    # Odd rows accept every draft, even rows none. Rows commit (k + 2) / 2 tokens on average at
    # width k + 1 for a cost of 1 + 0.2 k, which pays for one row of the accepting kind and would
    # pay on the batch's mean; but a batch ends with its slowest rows, which gain nothing.
    costs = {w: 1.0 + 0.2 * (w - 1) for w in ARM_WIDTHS}
    half = lambda fed, row: fed if row % 2 else 0  # noqa: E731
    alone = _play_batch(_policy(costs, drafts=7), 120, lambda fed, row: fed, rows=1)
    batch = _play_batch(_policy(costs, drafts=7), 120, half, rows=50)
    even = _play_batch(_policy(costs, drafts=7), 120, lambda fed, row: fed, rows=50)
    assert sum(f > 0 for f in alone[-40:]) == 40 and sum(f > 0 for f in even[-40:]) == 40
    assert sum(f > 0 for f in batch[-60:]) <= 7  # a probe at most


def test_the_straggler_rate_leaves_sequential_alone_and_scales_the_gain():
    policy = _policy(linear(0.1), drafts=7)
    rates = np.array([1.0, 1.8, 2.5, 4.0])
    policy.laggard = 0.5
    assert np.allclose(policy.straggle(rates), [1.0, 1.4, 1.75, 2.5])
    policy.laggard = 1.0
    assert np.allclose(policy.straggle(rates), rates)
