"""Bad input gets a clear error that names the problem."""

from __future__ import annotations

import pytest
import torch

import jacobix
from jacobix.models import LlamaConfig

from conftest import tiny_model


@pytest.fixture(scope="module")
def m():
    return tiny_model(0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_ids=[[]]), "empty prompt"),
        (dict(input_ids=[]), "at least one prompt"),
        (dict(window=0), "window must be an int >= 1"),
        (dict(max_new_tokens=-1), "max_new_tokens must be an int >= 0"),
        (dict(method="beam"), "unknown method"),
        (dict(method="jacobi", temperature=0.8), "use method='sjd'"),
        (dict(method="sjd", temperature=0.0), "use method='jacobi'"),
        (dict(input_ids=[[1, 99]]), "outside [0, 11)"),
        (dict(input_ids=torch.zeros(2, 2, 2, dtype=torch.long)), "1-D or 2-D"),
        (dict(init="diagonal"), "unknown init"),
        (dict(init="row-above"), "row_length"),
        (dict(cfg_scale=2.0), "needs both cfg_scale and negative_input_ids"),
        (dict(cfg_scale=2.0, negative_input_ids=[[0], [0], [0]]), "3 rows but input_ids has 2"),
        (dict(method="sjd", temperature=1.0, top_k=0), "top_k must be >= 1"),
        (dict(method="sjd", temperature=1.0, top_p=1.5), "top_p must be in (0, 1]"),
        (dict(method="sjd", temperature=-1.0), "temperature must be"),
        (dict(max_new_tokens=5000), "exceeds this model's max_seq_len"),
    ],
)
def test_bad_arguments(m, kwargs, message):
    args = dict(input_ids=[[1, 2], [3]], max_new_tokens=4)
    args.update(kwargs)
    with pytest.raises(ValueError) as error:
        jacobix.generate(m, args.pop("input_ids"), **args)
    assert message in str(error.value)


def test_nan_logits(m):
    broken = tiny_model(0)
    with torch.no_grad():
        broken.output.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN logits"):
        jacobix.generate(broken, [[1, 2]], max_new_tokens=3)


def test_processor_that_masks_everything(m):
    def mask_all(logits, new_positions):
        return torch.full_like(logits, float("-inf"))

    for method, temperature in [("jacobi", 0.0), ("sjd", 1.0)]:
        with pytest.raises(ValueError, match="every token was masked"):
            jacobix.generate(m, [[1, 2]], method=method, temperature=temperature, max_new_tokens=3, processors=[mask_all])


def test_processor_sees_generated_positions(m):
    seen = []

    def record(logits, new_positions):
        seen.append(new_positions.clone())
        return logits

    jacobix.generate(m, [[1, 2, 3], [4]], method="jacobi", window=4, max_new_tokens=6, processors=[record])
    assert seen[0].tolist() == [[0], [0]]  # the first token, from the prefill logits
    assert seen[1].tolist() == [[1, 2, 3, 4], [1, 2, 3, 4]]


def test_forbidding_a_token_by_position_is_honoured(m):
    def no_token_0_at_even(logits, new_positions):
        even = (new_positions % 2 == 0)[..., None]
        banned = torch.zeros_like(logits, dtype=torch.bool)
        banned[..., 0] = True
        return logits.masked_fill(even & banned, float("-inf"))

    for method, kw in [("jacobi", {}), ("sjd", dict(temperature=2.0, generator=torch.Generator().manual_seed(0)))]:
        out = jacobix.generate(m, [[0] * 3] * 16, method=method, window=5, max_new_tokens=12, processors=[no_token_0_at_even], **kw)
        for tokens in out.tokens:
            assert all(int(t) != 0 for t in tokens[0::2])


@pytest.mark.parametrize("field, value, message", [
    ("dim", 30, "divisible by num_heads"), ("num_kv_heads", 3, "multiple of num_kv_heads"), ("vocab_size", 0, ">= 1"),
])
def test_bad_model_config(field, value, message):
    args = dict(vocab_size=10, dim=32, num_heads=4, num_kv_heads=2)
    args[field] = value
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**args)


def test_zero_new_tokens_returns_empty(m):
    out = jacobix.generate(m, [[1, 2]], method="jacobi", max_new_tokens=0)
    assert out.tokens[0].numel() == 0 and out.stats.forward_passes == 0
