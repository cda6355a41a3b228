"""The Ray engine (needs ``jacobix[ray]``): a local cluster with 2 actors writes the same rows
as the local engine, greedy, sampled and images, whatever the batch size."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs: pip install 'jacobix[ray]'")

from jacobix.batch import BatchSpec, ResultWriter, run_local  # noqa: E402
from jacobix.core.sampling import SamplingConfig  # noqa: E402
from jacobix.tokens.decoding import Decoding  # noqa: E402
from jacobix.cli import main  # noqa: E402
from jacobix.integrations.ray import RayBatchGenerator, actor_pool, run_ray  # noqa: E402

PROMPTS = ["ROMEO:\n", "JULIET:\nO ", "To be", "KING HENRY:\nNow, lords", "A", "Good morrow", "Hark", "Thou"]


@pytest.fixture(scope="module", autouse=True)
def ray_temp_dir():
    """Ray's session files (logs, sockets, spilled objects) in a folder of the tests' own, removed after them.

    Short on purpose (``/tmp/jxray...``): Ray puts Unix sockets there, whose paths must stay short.
    """
    folder = tempfile.mkdtemp(prefix="jxray")
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = folder
    yield folder
    if ray.is_initialized():
        ray.shutdown()
    if before is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = before
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(ray_temp_dir):
    """One local 2-CPU cluster for the module, shut down after it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _rows(n: int) -> list[dict]:
    return [{"id": i if i % 2 else f"row-{i}", "prompt": PROMPTS[i % len(PROMPTS)]} for i in range(n)]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("spec", [BatchSpec(decoding=Decoding(method="jacobi", window=16, init="repeat"), max_new_tokens=32, batch_size=5),
                                  BatchSpec(decoding=Decoding(method="sjd", window=16, init="repeat"), sampling=SamplingConfig(temperature=0.8), max_new_tokens=32, batch_size=5)],
                         ids=["greedy", "sjd"])
def test_two_ray_actors_write_what_the_local_engine_writes(cluster, tmp_path, spec):
    rows = _rows(12)
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    with ResultWriter(local) as writer:
        run_local(replace(spec, batch_size=4), rows, writer)  # another batch size too
    with ResultWriter(remote) as writer:
        assert run_ray(spec, rows, writer, actors=2) == 12
    assert remote.read_text() == local.read_text()  # same rows, same order, same ids (int and str kept)
    assert [r["id"] for r in _lines(remote)] == [r["id"] for r in rows]


def test_the_command_on_ray_makes_the_local_pngs_and_restarts(cluster, tmp_path):
    source = tmp_path / "labels.jsonl"
    source.write_text("".join(json.dumps({"id": f"i{k}", "label": k}) + "\n" for k in (1, 4, 8)))
    common = ["generate-batch", "--input", str(source), "--model", "fmnist-ar", "--method", "sjd", "--window", "16",
              "--batch-size", "2"]
    assert main([*common, "--output", str(tmp_path / "local.jsonl")]) == 0
    ray_out = tmp_path / "ray.jsonl"
    ray_out.write_text(json.dumps({"id": "i1", "label": 1, "png": "made before", "stats": {}}) + "\n")  # a finished row
    assert main([*common, "--output", str(ray_out), "--backend", "ray", "--actors", "2"]) == 0
    rows = _lines(ray_out)
    assert [r["id"] for r in rows] == ["i1", "i4", "i8"] and rows[0]["png"] == "made before"
    local = {r["id"]: Path(r["png"]).read_bytes() for r in _lines(tmp_path / "local.jsonl")}
    assert all(Path(r["png"]).read_bytes() == local[r["id"]] for r in rows[1:])


def test_the_class_goes_straight_into_map_batches(cluster, tmp_path):
    spec = BatchSpec(decoding=Decoding(method="jacobi", init="repeat"), max_new_tokens=16)
    rows = [{"id": str(r["id"]), "prompt": r["prompt"]} for r in _rows(4)]
    out = ray.data.from_items(rows).map_batches(RayBatchGenerator, fn_constructor_kwargs={"spec": spec}, batch_size=2,
                                                num_cpus=1, **actor_pool(ray, 1))
    results = sorted((dict(r) for r in out.iter_rows()), key=lambda r: rows.index({"id": r["id"], "prompt": r["prompt"]}))
    with ResultWriter(tmp_path / "l.jsonl") as writer:
        run_local(spec, rows, writer)
    assert [list(r["tokens"]) for r in results] == [r["tokens"] for r in _lines(tmp_path / "l.jsonl")]
    assert set(actor_pool(ray, 3)) == {"compute"}  # not the deprecated concurrency=


@pytest.mark.slow
def test_bench_batch_compares_engines_on_the_same_rows(tmp_path, capsys):
    import json

    from jacobix.cli import main

    path = tmp_path / "batch.json"
    assert main(["bench", "batch", "--rows", "4", "--max-new-tokens", "4", "--actors", "1", "--json", str(path)]) == 0
    records = json.loads(path.read_text())
    assert [(r["engine"], r["actors"]) for r in records] == [("local", 0), ("ray", 1)]
    assert all(r["identical_to_local"] for r in records) and records[0]["ratio_to_local"] == 1.0
    assert "identical to local" in capsys.readouterr().out
    assert main(["bench", "batch", "--seeds", "2"]) == 2  # rows are seeded by their ids
