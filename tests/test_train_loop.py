"""The one training loop: the schedules on hand-built cases, batch sharding, and a resumed run that
is the uninterrupted run bit for bit (model, optimizer, step, RNG and recipe state)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from jacobix.train import distributed
from jacobix.train.distributed import Run, RunOptions, read_metrics
from jacobix.train.loop import FitConfig, StepEnd, fit, shard_batch
from jacobix.train.schedule import OneCycle, Rates, WarmupCosine, one_cycle, warmup_cosine


def test_warmup_cosine_on_hand_computed_steps():
    # peak 1, warm-up 2, 4 steps: min(1, (s+1)/2) * (1 + cos(pi s / 4)) / 2
    expected = [0.5 * 1.0, 1.0 * (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2]
    got = [warmup_cosine(s, peak=1.0, warmup=2, steps=4) for s in range(4)]
    assert got == pytest.approx(expected, abs=1e-15)
    assert warmup_cosine(0, peak=3e-3, warmup=0, steps=10) == pytest.approx(3e-3)  # no warm-up: full rate at once
    assert warmup_cosine(10, peak=1.0, warmup=1, steps=10) == pytest.approx(0.0, abs=1e-15)
    # the expression every trainer wrote before the loop existed, float for float
    lr, warmup, steps = 2e-3, 50, 900
    for step in (0, 7, 49, 50, 300, 899):
        old = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        assert warmup_cosine(step, peak=lr, warmup=warmup, steps=steps) == old
    assert WarmupCosine(peak=1.0, steps=4, warmup=2)(1) == Rates(lr=got[1])


def test_one_cycle_is_pytorchs_one_cycle_float_for_float():
    param = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=2e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=37)
    for step in range(37):
        group = optimizer.param_groups[0]
        assert one_cycle(step, peak=2e-3, steps=37) == (group["lr"], group["betas"][0])
        optimizer.step()
        scheduler.step()
    lr, beta1 = one_cycle(0, peak=1.0, steps=10)
    assert lr == pytest.approx(1 / 25) and beta1 == pytest.approx(0.95)  # starts low, momentum high
    assert one_cycle(2, peak=1.0, steps=10)[0] == pytest.approx(1.0)  # peak at 30% of the run
    assert OneCycle(peak=1.0, steps=10)(2).beta1 == pytest.approx(0.85)


def test_schedule_and_fit_configs_name_the_bad_field():
    with pytest.raises(ValueError, match="warmup >= 0"):
        WarmupCosine(peak=1.0, steps=4, warmup=-1)
    with pytest.raises(ValueError, match="steps >= 2"):
        OneCycle(peak=1.0, steps=1)
    schedule = WarmupCosine(peak=1.0, steps=4)
    with pytest.raises(ValueError, match="clip"):
        FitConfig(schedule=schedule, clip=0.0)
    with pytest.raises(ValueError, match="betas"):
        FitConfig(schedule=schedule, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="log_every"):
        FitConfig(schedule=schedule, log_every=0)


@dataclass(frozen=True)
class Pair:
    x: Tensor
    y: Tensor
    note: str = "kept"


def test_shard_batch_takes_this_ranks_rows_of_tensors_tuples_and_dataclasses():
    run = Run(rank=1, world_size=2)
    rows = torch.arange(8).reshape(4, 2)
    assert torch.equal(shard_batch(rows, run), rows[2:])
    x, none = shard_batch((rows, None), run)
    assert torch.equal(x, rows[2:]) and none is None
    pair = shard_batch(Pair(rows, torch.arange(4)), run)
    assert torch.equal(pair.y, torch.tensor([2, 3])) and pair.note == "kept"
    with pytest.raises(ValueError, match="divisible by 2"):
        shard_batch(torch.arange(3), run)
    with pytest.raises(TypeError, match="a batch must be"):
        shard_batch({"x": rows}, run)


class Counter:
    """Recipe state: how many rows the loss saw (carried by checkpoints)."""

    def __init__(self) -> None:
        self.rows = 0

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = state["rows"]


def _regression(out, *extra: str, steps: int = 8) -> tuple[nn.Module, Counter, object]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    counter, target = Counter(), torch.randn(4, 1, generator=torch.Generator().manual_seed(1))

    def loss_fn(module: nn.Module, batch: Tensor) -> tuple[Tensor, dict]:
        counter.rows += len(batch)
        residual = module(batch) - batch @ target  # (B, 1)
        return residual.pow(2).mean(), {"abs": residual.abs().mean()}

    def restart(end: StepEnd) -> None:  # draws from the shared generator, as VQ's code restarts do
        if end.step % 3 == 2:
            torch.randn(5, generator=end.generator)

    options = RunOptions(**dict(zip(extra[::2], extra[1::2])))
    config = FitConfig(schedule=WarmupCosine(peak=0.05, steps=steps, warmup=2), weight_decay=0.1, log_every=1)
    result = fit(model, loss_fn, lambda step, g: torch.randn(6, 4, generator=g), config, options=options, out=out,
                 on_step=restart, state={"counter": counter})
    return model, counter, result


def test_a_run_stopped_and_resumed_is_the_uninterrupted_run(tmp_path):
    full, counter, result = _regression(tmp_path / "full")
    assert result.finished and (result.first, result.last) == (0, 8) and counter.rows == 48
    assert not (tmp_path / "full" / distributed.CHECKPOINT).exists()  # only when asked
    _, _, cut = _regression(tmp_path / "cut", "stop_after", 5)
    assert not cut.finished
    checkpoint = tmp_path / "cut" / distributed.CHECKPOINT
    state = torch.load(checkpoint, weights_only=True)  # no code runs on load
    assert state["step"] == 5 and state["extra"]["state"]["counter"] == {"rows": 30}
    resumed, counter, result = _regression(tmp_path / "cut", "resume", checkpoint)
    assert result.first == 5 and counter.rows == 48
    assert read_metrics(tmp_path / "cut" / distributed.METRICS) == read_metrics(tmp_path / "full" / distributed.METRICS)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert result.recent == [row["loss"] for row in read_metrics(tmp_path / "full" / distributed.METRICS)]


def test_metrics_hold_the_loss_the_parts_and_the_rate(tmp_path):
    _, _, result = _regression(tmp_path, steps=4)
    rows = read_metrics(tmp_path / distributed.METRICS)
    assert [set(r) for r in rows] == [{"step", "loss", "abs", "lr"}] * 4
    assert [r["lr"] for r in rows] == [warmup_cosine(s, peak=0.05, warmup=2, steps=4) for s in range(4)]
    assert rows[-1]["loss"] < rows[0]["loss"] and result.recent_loss(2) == pytest.approx((rows[2]["loss"] + rows[3]["loss"]) / 2)


def test_save_every_also_checkpoints_the_last_step(tmp_path):
    _regression(tmp_path, "save_every", 3, steps=4)
    assert torch.load(tmp_path / distributed.CHECKPOINT, weights_only=True)["step"] == 4


def test_an_encoded_split_is_cached_by_the_tokenizer_weights_and_a_damaged_file_is_rebuilt(tmp_path, monkeypatch):
    import numpy as np
    from torch import nn

    import jacobix.train.image_data as image_data

    monkeypatch.setattr(image_data, "load_fashion_mnist",
                        lambda split: (np.zeros((5, 28, 28), dtype=np.float32), np.arange(5)))

    class Counting(nn.Module):
        def __init__(self, bias: float) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor(bias))
            self.calls = 0

        def encode(self, images):
            self.calls += 1
            return torch.full((len(images), 14, 14), int(self.bias.item()), dtype=torch.long)

    first = Counting(1.0)
    codes, labels = image_data.tokenize_split("test", first, cache=tmp_path)
    again, _ = image_data.tokenize_split("test", first, cache=tmp_path)
    assert first.calls == 1 and torch.equal(codes, again) and codes.shape == (5, 196) and labels.tolist() == [0, 1, 2, 3, 4]
    other = Counting(2.0)
    assert int(image_data.tokenize_split("test", other, cache=tmp_path)[0][0, 0]) == 2 and other.calls == 1
    for path in tmp_path.glob("*.safetensors"):
        path.write_bytes(b"torn")
    assert torch.equal(image_data.tokenize_split("test", first, cache=tmp_path)[0], codes) and first.calls == 2
    assert not list(tmp_path.glob("*.partial"))
