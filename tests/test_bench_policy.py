"""``jacobix bench policy`` on the numpy suite: exactness checked episode by episode, lossy rows named."""

from __future__ import annotations

import json

import pytest

from jacobix.bench.policy import PolicyBenchConfig, bench_policy, settings, table, write_json
from jacobix.cli import main


@pytest.fixture(scope="module")
def rows():
    config = PolicyBenchConfig(teacher="pointmass-policy", student="pointmass-policy", episodes_per_task=4, caps=(1,),
                               settle_bins=(3,), wall_chunks=2)
    return config, bench_policy(config)


def test_exact_rows_reproduce_ar_episode_by_episode_and_lossy_rows_are_named(rows):
    config, result = rows
    assert [r.setting.name for r in result] == [s.name for s in settings(config)]
    exact = [r for r in result if r.setting.method == "jacobi" and not r.setting.lossy]
    assert len(exact) == 2 and all(r.same_as_ar for r in exact)
    ar = result[0]
    assert ar.passes_per_chunk == 17.0 and ar.passes_vs_ar == 1.0  # 16 decoding passes and the prefill
    capped = next(r for r in result if r.setting.cap == 1)
    assert capped.passes_per_chunk == 2.0 and "LOSSY" in capped.setting.name and capped.same_as_ar is None
    for r in result:
        record = r.to_json()
        assert record["episodes"] == 12 and record["ci_low"] <= record["success_rate"] <= record["ci_high"]
        assert record["lossy"] == r.setting.lossy and record["wall_ms_per_chunk"] > 0


def test_table_and_json_carry_every_row(rows, tmp_path):
    config, result = rows
    text = table(result, config)
    assert text.count("LOSSY") >= 2 and "yes" in text
    write_json(tmp_path / "p.json", result, config)
    written = json.loads((tmp_path / "p.json").read_text())["rows"]
    keys = {"setting", "success_rate", "ci_low", "ci_high", "episodes", "passes_per_chunk", "passes_vs_ar", "wall_vs_ar"}
    assert len(written) == len(result) and all(keys <= set(row) for row in written)


def test_bench_policy_refuses_options_of_other_targets(capsys):
    assert main(["bench", "policy", "--rows", "3"]) == 2
    assert "--rows does not apply to bench policy" in capsys.readouterr().err
    assert main(["bench", "text", "--caps", "2"]) == 2
    with pytest.raises(ValueError, match="caps"):
        PolicyBenchConfig(caps=(0,))
